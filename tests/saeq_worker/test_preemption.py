"""Preemption on a real stack (API, Celery worker, Redis, S3; the tiny model on CPU): a training
asked to yield, or whose worker gets SIGTERM, is queued again with a checkpoint at the step it
stopped and ends with the same weights as an uninterrupted run; a preempted harvest keeps every
shard it finished; a job preempted three times still ends."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch
from safetensors.torch import load_file

from saeq import keys
from saeq.platform.dispatch import waiting_dispatches
from saeq.platform.registry import Registry
from saeq.specs import ActivationsRef, HarvestSpec, SaeConfig, TrainSpec
from tests.fixtures_stack import make_stack
from tests.saeq_worker.conftest import HOOK

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_srv, s3_srv):
    """API + one worker whose jobs heartbeat every 0.25 s: a yield lands within a few dozen steps."""
    with make_stack(tmp_path_factory.mktemp("stack"), redis_srv, s3_srv, SAEQ_HEARTBEAT_S="0.25") as st:
        yield st


@pytest.fixture(scope="module")
def registry(stack) -> Registry:
    return Registry.from_url(stack.opts.redis_url, retry_s=5)


def _train_spec(harvest_id: str) -> TrainSpec:
    # 768 steps of a small SAE, a checkpoint every 16: seconds on an idle machine, and each yield
    # is asked once a checkpoint shows the run is under way.
    return TrainSpec(
        activations=ActivationsRef(job_id=harvest_id, hook=HOOK),
        saes=[SaeConfig(name="topk", d_sae=256, k=8)],
        batch_size=256,
        total_tokens=196_608,
        validation_tokens=2048,
        checkpoint_every_tokens=4096,
    )


@pytest.fixture(scope="module")
def reference(client_module, harvest_job) -> dict:
    """The training run once without interruption."""
    return client_module.wait(client_module.submit(_train_spec(harvest_job["id"]))["id"], timeout=600)


def _weights(client, job_id: str, dest) -> dict[str, torch.Tensor]:
    files = client.download(job_id, dest, prefix="saes/topk/saelens/")
    return load_file(next(str(p) for p in files if p.name.endswith(".safetensors")))


def _assert_same_weights(client, a: str, b: str, tmp_path) -> None:
    wa, wb = _weights(client, a, tmp_path / "a"), _weights(client, b, tmp_path / "b")
    assert wa.keys() == wb.keys()
    for name, tensor in wa.items():
        assert torch.equal(tensor, wb[name]), name


def _wait_event(client, job_id: str, phase: str, *, after: int = 0, timeout: float = 300) -> list[dict]:
    """The job's events once more than `after` of them are `phase`."""
    deadline = time.monotonic() + timeout
    while True:
        events = client.events(job_id)
        if sum(e["phase"] == phase for e in events) > after:
            return events
        assert time.monotonic() < deadline, f"no {phase!r} event: {[e['phase'] for e in events]}"
        time.sleep(0.05)


def _only(events: list[dict], phase: str) -> list[dict]:
    return [e for e in events if e["phase"] == phase]


def _check_resumed_where_it_yielded(events: list[dict], n: int) -> None:
    """Each of `n` preemptions was followed by a resume from the checkpoint at its own step."""
    preempted, resumed = _only(events, "preempted"), _only(events, "resumed")
    assert len(preempted) == len(resumed) == n, [e["phase"] for e in events]
    for p, r in zip(preempted, resumed, strict=True):
        assert p["t"] < r["t"]
        assert 0 < p["figures"]["tokens"] < 196_608
        assert r["figures"]["tokens"] == p["figures"]["tokens"]  # nothing redone beyond the last step


def test_a_training_preempted_by_request_resumes_to_the_same_weights(
    client_module, harvest_job, reference, registry, tmp_path
):
    client = client_module
    job = client.submit(_train_spec(harvest_job["id"]))
    _wait_event(client, job["id"], "checkpoint")
    assert registry.request_preempt(job["id"], "a higher-priority job")
    done = client.wait(job["id"], timeout=600)
    assert done["state"] == "succeeded", done["error"]
    record = registry.get(job["id"])
    assert record is not None and (record["preemptions"], record["attempts"]) == (1, 1)  # the attempt given back
    events = client.events(job["id"])
    assert _only(events, "preempted")[0]["figures"]["reason"] == "a higher-priority job"
    _check_resumed_where_it_yielded(events, 1)
    _assert_same_weights(client, reference["id"], job["id"], tmp_path)


def test_sigterm_to_the_worker_requeues_the_training_for_another_worker(
    stack, client_module, harvest_job, reference, registry, tmp_path
):
    client = client_module
    job = client.submit(_train_spec(harvest_job["id"]))
    _wait_event(client, job["id"], "checkpoint")
    main = stack.procs["worker"]
    assert registry.r.hlen("unacked") == 1  # acks_late: the running job's message, held by kombu
    os.kill(main.pid, signal.SIGTERM)  # the main process only, as Kubernetes signals a pod's PID 1
    main.wait(timeout=120)  # its warm shutdown waited for the job to yield
    record = registry.get(job["id"])
    assert record is not None and record["state"] == "queued", record and record["state"]
    preempted = _only(client.events(job["id"]), "preempted")
    assert [e["figures"]["reason"] for e in preempted] == ["worker shutting down"]
    stack.respawn("worker")
    done = client.wait(job["id"], timeout=600)
    assert done["state"] == "succeeded", done["error"]
    events = client.events(job["id"])
    _check_resumed_where_it_yielded(events, 1)
    assert len(_only(events, "running")) == 2  # one claim each side of the drain: no duplicate run
    # The drained worker's message was acked, not put back for a second run.
    assert waiting_dispatches(registry.r) == set() and registry.r.hlen("unacked") == 0
    _assert_same_weights(client, reference["id"], job["id"], tmp_path)


def test_a_training_preempted_three_times_still_ends_with_the_same_weights(
    client_module, harvest_job, reference, registry, tmp_path
):
    client = client_module
    job = client.submit(_train_spec(harvest_job["id"]))
    since = 0.0
    for n in range(3):
        # Progress between preemptions: a checkpoint stored by this attempt, after its resume.
        deadline = time.monotonic() + 300
        while not any(e["phase"] == "checkpoint" and e["t"] > since for e in client.events(job["id"])):
            assert time.monotonic() < deadline, "no progress after the resume"
            time.sleep(0.05)
        assert registry.request_preempt(job["id"], f"preemption {n + 1}")
        since = _only(_wait_event(client, job["id"], "resumed", after=n), "resumed")[-1]["t"]
    done = client.wait(job["id"], timeout=600)
    assert done["state"] == "succeeded", done["error"]
    assert registry.get(job["id"])["preemptions"] == 3  # type: ignore[index]
    _check_resumed_where_it_yielded(client.events(job["id"]), 3)
    _assert_same_weights(client, reference["id"], job["id"], tmp_path)


def _harvest_spec(harvest_job: dict, **kw) -> HarvestSpec:
    return HarvestSpec.model_validate({**harvest_job["spec"], "shard_tokens": 512, **kw})  # 48 shards


@pytest.fixture(scope="module")
def whole_harvest(client_module, harvest_job) -> dict:
    """The 48-shard harvest run once without interruption."""
    return client_module.wait(client_module.submit(_harvest_spec(harvest_job))["id"], timeout=300)


def test_a_preempted_harvest_keeps_its_finished_shards(client_module, harvest_job, whole_harvest, registry, s3_srv):
    client, whole = client_module, whole_harvest
    job = client.submit(_harvest_spec(harvest_job))
    s3 = s3_srv.client()
    shard = lambda i: keys.harvest_shard(job["id"], HOOK, i)
    deadline = time.monotonic() + 120
    while not _stored(s3, s3_srv.bucket, shard(2)):
        assert time.monotonic() < deadline, "no shard stored"
        time.sleep(0.05)
    assert registry.request_preempt(job["id"], "a higher-priority job")
    events = _wait_event(client, job["id"], "preempted")
    kept = int(_only(events, "preempted")[0]["figures"]["shards"])
    assert 3 <= kept < 48
    before = {i: _stat(s3, s3_srv.bucket, shard(i)) for i in range(kept)}
    done = client.wait(job["id"], timeout=300)
    assert done["state"] == "succeeded", done["error"]
    resumed = _only(client.events(job["id"]), "resumed")
    assert [e["figures"]["shards"] for e in resumed] == [kept]  # it skipped exactly those it had
    assert {i: _stat(s3, s3_srv.bucket, shard(i)) for i in range(kept)} == before  # none written again
    ours, theirs = (client.manifest(j)["hooks"][HOOK]["shards"] for j in (job["id"], whole["id"]))
    assert [s["sha256"] for s in ours] == [s["sha256"] for s in theirs]


def _stored(s3, bucket: str, key: str) -> bool:
    try:
        s3.stat_object(bucket, key)
    except Exception:  # minio's S3Error: not there yet
        return False
    return True


def _stat(s3, bucket: str, key: str) -> tuple[str | None, object]:
    info = s3.stat_object(bucket, key)
    return info.etag, info.last_modified


def test_a_preempted_split_harvest_ends_with_the_shards_of_a_single_one(
    client_module, harvest_job, whole_harvest, registry, s3_srv
):
    client = client_module
    job = client.submit(_harvest_spec(harvest_job, slices=2))  # one worker: the job's task runs both slices
    s3 = s3_srv.client()
    deadline = time.monotonic() + 120
    while not _stored(s3, s3_srv.bucket, keys.harvest_shard(job["id"], HOOK, 4)):
        assert time.monotonic() < deadline, "no shard stored"
        time.sleep(0.05)
    assert registry.request_preempt(job["id"], "a higher-priority job")
    _wait_event(client, job["id"], "preempted")
    kept = {i: _stat(s3, s3_srv.bucket, keys.harvest_shard(job["id"], HOOK, i)) for i in range(5)}
    done = client.wait(job["id"], timeout=300)
    assert done["state"] == "succeeded", done["error"]
    assert registry.get(job["id"])["preemptions"] == 1  # type: ignore[index]
    assert {i: _stat(s3, s3_srv.bucket, keys.harvest_shard(job["id"], HOOK, i)) for i in range(5)} == kept
    ours, theirs = (client.manifest(j)["hooks"][HOOK]["shards"] for j in (job["id"], whole_harvest["id"]))
    assert [s["sha256"] for s in ours] == [s["sha256"] for s in theirs]
