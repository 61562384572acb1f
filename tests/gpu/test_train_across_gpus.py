"""The CUDA paths of training across devices: a sweep's SAEs placed on the GPUs (SAE i on GPU
i % n, the batch copied once to each), and one SAE data-parallel over NCCL ranks (2 GPUs or more)
ending where one GPU ends. Run by bench/gpu/check.sh (`pytest -m gpu`); skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from saeq.jobs.train import train_saes
from saeq.specs import SaeConfig, TrainSpec
from saeq.specs.train import ActivationsRef

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

TOPK = SaeConfig(d_sae=128, k=2, aux_k=8, auxk_alpha=0.5, dead_window_tokens=61, lr=1e-2)


def spec(*saes: SaeConfig, **kw) -> TrainSpec:
    kw = {"total_tokens": 61 * 12, "batch_size": 61, "checkpoint_every_tokens": None} | kw
    return TrainSpec(activations=ActivationsRef(job_id="d" * 32), saes=list(saes), **kw)


def batches(n: int = 12, rows: int = 61, d_in: int = 16) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(rows, d_in, generator=gen) * 3 + 1 for _ in range(n)]


def test_a_sweep_places_sae_i_on_gpu_i_mod_n_and_trains_as_on_one():
    n = torch.cuda.device_count()
    saes = [TOPK.model_copy(update={"name": f"s{i}"}) for i in range(2 * n)]
    held_out = batches(1, 256)[0]
    spread = train_saes(spec(*saes), batches(), validation=held_out, devices=[f"cuda:{i}" for i in range(n)])
    alone = train_saes(spec(*saes), batches(), validation=held_out, device="cuda:0")
    assert spread.steps == 12 and len(spread.saes) == 2 * n
    for name in spread.saes:
        assert spread.metrics[name].fvu == pytest.approx(alone.metrics[name].fvu, rel=1e-3), name


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_data_parallel_on_two_gpus_ends_where_one_gpu_ends():
    s = spec(TOPK, parallel="data", gpus=2)
    held_out = batches(1, 256)[0]
    one = train_saes(s, batches(), validation=held_out, device="cuda:0")
    two = train_saes(s, batches(), validation=held_out, devices=["cuda:0", "cuda:1"])
    assert two.steps == one.steps
    # bf16 autocast on CUDA: compared by what the SAE does, not bit for bit.
    assert two.metrics["sae0"].fvu == pytest.approx(one.metrics["sae0"].fvu, rel=2e-2)
    for name, w in one.saes["sae0"].state_dict().items():
        w2 = two.saes["sae0"].state_dict()[name].cpu()
        assert float((w2 - w.cpu()).norm() / w.norm().clamp_min(1e-12)) < 2e-2, name
