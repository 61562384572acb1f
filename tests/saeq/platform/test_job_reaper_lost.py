"""Lost attempts are counted by the reaper: a worker killed -9 never reports its attempt, so the
count comes from the requeue (or the end) of a job whose lease expired."""

from __future__ import annotations

import pytest
import redis

from saeq.platform import redis_keys
from saeq.platform.registry import Registry
from saeq.platform.teams import TeamQuota

DB = 13
"""A database of its own, flushed first: the reaper reads every running job."""


@pytest.fixture
def registry(redis_srv) -> Registry:
    client = redis.Redis.from_url(f"{redis_srv.url.rsplit('/', 1)[0]}/{DB}", decode_responses=True)
    client.flushdb()
    reg = Registry(client, lease_ttl_s=30)
    reg.teams.set_quota("lab", TeamQuota(max_running=100))
    return reg


def running_job(registry: Registry, kind: str) -> str:
    created, _ = registry.create(kind=kind, spec={}, queue="cpu", depends_on=[], team="lab")
    _, dispatch_id = registry.ready_to_dispatch(created["id"])
    assert registry.claim(created["id"], dispatch_id, "worker-a").action == "run"
    return created["id"]


def kill_worker(registry: Registry, job_id: str) -> None:
    """SIGKILL: no report, no release; its lease simply runs out (deleted here, as if expired)."""
    registry.r.delete(redis_keys.job_lease(job_id))


def test_an_expired_lease_counts_a_lost_attempt_when_requeued_and_when_out_of_attempts(registry):
    requeued, exhausted, healthy = (
        running_job(registry, "harvest"),
        running_job(registry, "train"),
        running_job(registry, "train"),
    )
    registry.r.hset(redis_keys.job(exhausted), "attempts", "3")  # its last attempt
    kill_worker(registry, requeued)
    kill_worker(registry, exhausted)
    resend, ended = registry.reap()
    assert [j["id"] for j, _ in resend] == [requeued] and ended == [exhausted]
    assert registry.stats()["attempts_lost"] == {"harvest": "1", "train": "1"}  # not the healthy one
    assert registry.reap() == ([], [])  # found once: a second pass counts nothing more
    assert registry.stats()["attempts_lost"] == {"harvest": "1", "train": "1"}
    assert registry.get(healthy)["state"] == "running"
