"""The measured peak beside the estimate: a job body run under `measured` on CPU, with a real
Registry on a real Redis, leaves `memory: {estimated_bytes, measured_peak_bytes, device}` in the
job's progress, the peak covering what the body allocated and not what was resident before; and,
end to end, a stack's worker advertises its pool and a harvest's record carries both figures."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest
import redis
import torch

from saeq.platform import pools
from saeq.platform.memory_estimate import estimate_peak
from saeq.platform.registry import Registry
from saeq.specs import HarvestSpec, ModelSpec
from saeq_worker.memory_peak import PeakMeter, measured
from tests.helpers import wait_for
from tests.tiny_model import save_tiny_llama

DB = 12
MIB = 1 << 20


@dataclass
class _Job:
    """What `measured` reads of a RunningJob."""

    id: str
    spec: HarvestSpec
    registry: Registry
    device: str = "cpu"
    devices: list[str] = field(default_factory=lambda: ["cpu"])
    _lease_lost: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def registry(redis_srv) -> Registry:
    client = redis.Redis.from_url(f"{redis_srv.url.rsplit('/', 1)[0]}/{DB}", decode_responses=True)
    client.flushdb()
    return Registry(client)


def _create(registry: Registry, spec: HarvestSpec) -> str:
    record, _ = registry.create(kind="harvest", spec=spec.model_dump(mode="json"), queue="gpu", depends_on=[])
    registry.report(record["id"], {"fraction": 1.0, "phase": "done", "message": "", "figures": {"tokens": 3.0}})
    return record["id"]


def test_the_cpu_peak_counts_what_the_job_allocated_only(registry):
    resident = torch.ones(48 * MIB // 4)  # before the job: not its memory
    spec = HarvestSpec(max_tokens=4096)
    job = _Job(_create(registry, spec), spec, registry)

    def body(_job) -> str:
        held = torch.ones(96 * MIB // 4)  # 96 MiB, touched
        time.sleep(0.3)  # several samples see it
        del held
        return "manifest-key"

    assert measured(body)(job) == "manifest-key"
    progress = registry.get(job.id)["progress"]
    assert progress["figures"] == {"tokens": 3.0}  # the done report is kept
    memory = progress["memory"]
    assert memory["device"] == "cpu"
    estimate = estimate_peak(spec, device="cpu")
    assert estimate is not None and memory["estimated_bytes"] == estimate.total_bytes
    assert 90 * MIB <= memory["measured_peak_bytes"] < 140 * MIB, memory
    del resident


def test_a_failing_job_still_gets_its_figures(registry):
    spec = HarvestSpec(max_tokens=4096)
    job = _Job(_create(registry, spec), spec, registry)

    def body(_job) -> str:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        measured(body)(job)
    assert registry.get(job.id)["progress"]["memory"]["measured_peak_bytes"] >= 0


def test_a_job_whose_lease_was_lost_writes_nothing(registry):
    spec = HarvestSpec(max_tokens=4096)
    job = _Job(_create(registry, spec), spec, registry)
    job._lease_lost.set()
    measured(lambda _job: "k")(job)
    assert "memory" not in registry.get(job.id)["progress"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_the_cuda_peak_is_max_memory_allocated_since_the_start():
    before = torch.ones(32 * MIB // 4, device="cuda")
    meter = PeakMeter(["cuda:0"]).start()
    x = torch.ones(64 * MIB // 4, device="cuda")
    del x
    peak = meter.stop()
    assert 96 * MIB <= peak < 100 * MIB  # what was allocated at the start counts, as in the estimate
    del before


@pytest.mark.integration
def test_a_stack_worker_advertises_and_a_harvest_records_both_figures(stack, client, tmp_path):
    r = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    # the worker advertises once its consumer starts, which may be after the API answers
    ads = wait_for(lambda: [ad for ad in pools.live_workers(r) if ad.queue == "gpu"], 120, "the worker's ad")
    assert ads and ads[0].device == "cpu" and ads[0].memory_bytes > 0 and ads[0].slots >= 1
    model_dir = save_tiny_llama(tmp_path / "tiny", n_layers=2, d_model=64)
    spec = HarvestSpec(
        model=ModelSpec(name=str(model_dir)), hooks=["blocks.1.hook_resid_post"], max_tokens=2048, context_len=64
    )
    job = client.wait(client.submit(spec)["id"], timeout=180)
    assert job["state"] == "succeeded", job.get("error")
    memory = job["progress"]["memory"]
    assert memory["device"] == "cpu"
    estimate = estimate_peak(spec, device="cpu")  # from its config.json
    assert estimate is not None and memory["estimated_bytes"] == estimate.total_bytes
    assert memory["measured_peak_bytes"] > 0
