"""A train job's `gpus: N` reaches the worker: the job computes on N devices of the pod (cuda:0..N-1,
or N CPU ranks on a CPU worker), and a pod with fewer GPUs than asked refuses naming the field."""

from __future__ import annotations

from typing import Any, cast

import pytest
import torch

from saeq.errors import InvalidSpec
from saeq.specs import SaeConfig, TrainSpec
from saeq_worker.running import RunningJob
from saeq_worker.train import _devices


def job(device: str, **kw) -> RunningJob:
    saes = [SaeConfig(name=f"s{i}") for i in range(4)]
    spec = TrainSpec.model_validate({"activations": {"job_id": "a" * 32}, "saes": saes, **kw})
    nothing = cast(Any, None)  # the device choice reads no registry or store
    return RunningJob("j" * 32, spec, 1, {}, nothing, nothing, device)


def test_a_job_asking_for_n_gpus_gets_n_devices():
    assert job("cuda").devices == ["cuda"]
    assert job("cuda", gpus=4).devices == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert job("cpu", gpus=2, parallel="data").devices == ["cpu", "cpu"]  # gloo ranks on a CPU worker
    assert _devices(job("cpu", gpus=2)) == ["cpu", "cpu"]


def test_a_pod_with_fewer_gpus_than_asked_refuses_naming_the_field(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert _devices(job("cuda", gpus=2)) == ["cuda:0", "cuda:1"]
    with pytest.raises(InvalidSpec, match="gpus=4, but this worker has 2 GPU") as e:
        _devices(job("cuda", gpus=4))
    assert e.value.field == "spec.gpus"
