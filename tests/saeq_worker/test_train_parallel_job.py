"""A train job asking for `gpus: 2` through the API: it goes to the multi-GPU queue, the worker
(on CPU here) trains it data-parallel over 2 gloo ranks, and the SAE it publishes is the one a
one-device job of the same spec publishes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from saeq.specs import SaeConfig, TrainSpec
from saeq.specs.train import ActivationsRef
from tests.saeq_worker.conftest import HOOK

pytestmark = pytest.mark.integration


def _spec(harvest_id: str, gpus: int) -> TrainSpec:
    return TrainSpec(
        activations=ActivationsRef(job_id=harvest_id, hook=HOOK),
        saes=[SaeConfig(name="topk", d_sae=256, k=8, dead_window_tokens=1024)],
        batch_size=512,
        total_tokens=512 * 20,
        validation_tokens=2048,
        checkpoint_every_tokens=None,
        gpus=gpus,
        parallel="data",
    )


def _weights(client, job_id: str, dest) -> dict[str, torch.Tensor]:
    files = client.download(job_id, dest, prefix="saes/topk/saelens/")
    return load_file(str(next(p for p in files if p.suffix == ".safetensors")))


def test_a_two_gpu_job_trains_data_parallel_to_the_one_device_weights(client_module, harvest_job, tmp_path):
    client = client_module
    two = client.submit(_spec(harvest_job["id"], gpus=2))
    one = client.submit(_spec(harvest_job["id"], gpus=1))
    assert client.get(two["id"])["queue"] == "gpu-multi" and client.get(one["id"])["queue"] == "gpu"
    done_two = client.wait(two["id"], timeout=600)
    done_one = client.wait(one["id"], timeout=600)
    assert done_two["state"] == done_one["state"] == "succeeded", done_two.get("error")
    assert 0 < done_two["progress"]["figures"]["fvu"] < 1
    w2, w1 = _weights(client, two["id"], tmp_path / "two"), _weights(client, one["id"], tmp_path / "one")
    assert set(w2) == set(w1)
    for name, w in w1.items():
        assert torch.allclose(w2[name], w, rtol=1e-4, atol=1e-4 * float(w.abs().max())), name
    m2, m1 = (client.manifest(j["id"])["saes"]["topk"]["metrics"] for j in (two, one))
    assert m2["fvu"] == pytest.approx(m1["fvu"], rel=1e-3)
