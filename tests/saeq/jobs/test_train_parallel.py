"""Training across devices: data-parallel over 2 gloo processes takes the steps one process takes
on the whole batch (TopK with AuxK and decoder normalisation), a sweep spread over 2 devices
trains the SAEs it trains on one, `gpus` is checked naming the field, and a failing rank ends
the run with its error and no process left behind."""

from __future__ import annotations

import time

import pytest
import torch
import torch.multiprocessing as mp
from pydantic import ValidationError

from saeq.errors import Cancelled
from saeq.jobs.train import train_saes
from saeq.specs import SaeConfig, TrainSpec
from saeq.specs.train import ActivationsRef

JOB = "d" * 32
HOOK = "blocks.1.hook_resid_post"

pytestmark = pytest.mark.usefixtures("one_thread")


def spec(*saes: SaeConfig, **kw) -> TrainSpec:
    kw = {
        "total_tokens": 61 * 12,
        "batch_size": 61,  # odd: the ranks hold 31 and 30 rows, so only global-batch normalisation matches
        "checkpoint_every_tokens": None,
        "lr_warmup": 0.0,
        "lr_decay": 0.0,
    } | kw
    return TrainSpec(activations=ActivationsRef(job_id=JOB, hook=HOOK), saes=list(saes), **kw)


def batches(n: int = 12, rows: int = 61, d_in: int = 16) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(rows, d_in, generator=gen) * 3 + 1 for _ in range(n)]


# Dead after one step without firing, and 122 firings a step for 128 latents: AuxK always has work.
TOPK = SaeConfig(d_sae=128, k=2, aux_k=8, auxk_alpha=0.5, dead_window_tokens=61, lr=1e-2)


def test_data_parallel_on_two_processes_gives_the_weights_of_one_process():
    s = spec(TOPK, parallel="data", gpus=2)
    one_progress, progress, checkpoints = [], [], []
    held_out, contexts = torch.cat(batches(4)), torch.arange(4 * 61) // 16  # 16 "contexts"
    one = train_saes(
        s,
        batches(),
        on_progress=one_progress.append,
        progress_every_s=0.0,
        validation=held_out,
        validation_contexts=contexts,
    )
    assert min(p.saes["sae0"]["dead_fraction"] for p in one_progress) > 0  # AuxK had dead latents
    two = train_saes(
        s.model_copy(update={"checkpoint_every_tokens": 61 * 6}),
        batches(),
        devices=["cpu", "cpu"],
        on_progress=progress.append,
        on_checkpoint=checkpoints.append,
        progress_every_s=0.0,
        validation=held_out,
        validation_contexts=contexts,
    )
    assert two.steps == one.steps == 12 and two.tokens == one.tokens
    # Rank 0 measures the held-out figures over the same 16 contexts as one process does.
    assert two.metrics["sae0"].intervals["fvu"].n == one.metrics["sae0"].intervals["fvu"].n == 16
    for name, w in one.saes["sae0"].state_dict().items():
        w2 = two.saes["sae0"].state_dict()[name]
        assert torch.allclose(w2, w, rtol=1e-5, atol=1e-5 * float(w.abs().max())), name
    assert two.metrics["sae0"].dead_fraction == one.metrics["sae0"].dead_fraction
    # Rank 0 alone reports and checkpoints, with the counters every rank agreed on.
    assert [p.step for p in progress] == list(range(1, 13))
    assert [c.step for c in checkpoints] == [6]
    assert progress[-1].saes["sae0"]["dead_fraction"] == pytest.approx(one.metrics["sae0"].dead_fraction)
    # Rank 0's checkpoint resumes (here in one process) to the same weights.
    resumed = train_saes(s.model_copy(update={"checkpoint_every_tokens": 61 * 6}), batches()[6:], resume=checkpoints[0])
    for name, w in one.saes["sae0"].state_dict().items():
        assert torch.allclose(resumed.saes["sae0"].state_dict()[name], w, rtol=1e-5, atol=1e-5 * float(w.abs().max()))


def test_a_sweep_spread_over_two_devices_trains_the_saes_of_one():
    saes = (TOPK.model_copy(update={"name": "a"}), SaeConfig(name="b", architecture="relu", d_sae=32, lr=1e-2))
    s = spec(*saes, gpus=2)
    held_out = batches(1, 256)[0]
    one = train_saes(s, batches(), validation=held_out)
    two = train_saes(s, batches(), validation=held_out, devices=["cpu", "cpu"])
    for name in ("a", "b"):
        for key, w in one.saes[name].state_dict().items():
            assert torch.equal(two.saes[name].state_dict()[key], w), (name, key)
        assert two.metrics[name] == one.metrics[name]


def test_gpus_is_checked_naming_the_field():
    with pytest.raises(ValidationError) as e:
        spec(TOPK, gpus=9)
    assert e.value.errors()[0]["loc"] == ("gpus",)
    with pytest.raises(ValidationError) as e:
        spec(TOPK, gpus=2)  # one SAE cannot use two GPUs in a sweep
    assert e.value.errors()[0]["loc"] == ("gpus",) and "parallel='data'" in str(e.value)
    with pytest.raises(ValidationError) as e:
        spec(SaeConfig(architecture="batchtopk"), gpus=2, parallel="data")
    assert e.value.errors()[0]["loc"] == ("saes", 0, "architecture")
    assert spec(TOPK, TOPK.model_copy(update={"name": "b"}), gpus=2).gpus == 2


def test_a_failing_rank_ends_the_run_with_its_error_and_leaves_no_process():
    s = spec(TOPK, parallel="data", gpus=2)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=r"rank 1 failed: RuntimeError: .*no-such-device"):
        train_saes(s, batches(), devices=["cpu", "no-such-device"])
    assert time.monotonic() - t0 < 120  # rank 0, waiting in a collective, was stopped: no hang
    assert not mp.active_children()


def test_a_cancel_reaches_every_rank():
    s = spec(TOPK, parallel="data", gpus=2, total_tokens=61 * 10_000)
    steps: list[int] = []
    with pytest.raises(Cancelled):
        train_saes(
            s,
            iter(lambda: torch.randn(61, 16), None),  # endless
            devices=["cpu", "cpu"],
            on_progress=lambda p: steps.append(p.step),
            should_stop=lambda: len(steps) >= 3,
            progress_every_s=0.0,
        )
    assert 3 <= len(steps) < 10_000 and not mp.active_children()
