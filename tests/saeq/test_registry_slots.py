"""A team's running slot is freed only when no worker computes its job any more, on a real Redis:
a job the reaper ends past its time limit keeps its slot until its worker lets go or its lease
expires; only then does the team's next job start."""

from __future__ import annotations

import time

import pytest
import redis

from saeq.registry import Registry, start_waiting
from saeq.teams import TeamQuota

DB = 15
"""A database of its own (stacks count up from 1), flushed first: the reaper reads every job."""


@pytest.fixture
def registry(redis_srv) -> Registry:
    client = redis.Redis.from_url(f"{redis_srv.url.rsplit('/', 1)[0]}/{DB}", decode_responses=True)
    client.flushdb()
    reg = Registry(client, lease_ttl_s=30)
    reg.teams.set_quota("lab", TeamQuota(max_running=1))
    return reg


def _held_past_its_limit(registry: Registry) -> tuple[str, str, str, list]:
    """A job of team lab running (claimed) past its time limit, and a second one waiting for the
    slot. Returns (held id, its lease token, waiting id, the dispatches sent)."""
    sent = []
    send = lambda job, dispatch_id: sent.append(job["id"])  # noqa: E731
    held, _ = registry.create(kind="harvest", spec={}, queue="cpu", depends_on=[], team="lab", time_limit_s=1)
    waiting, _ = registry.create(kind="harvest", spec={}, queue="cpu", depends_on=[], team="lab")
    dispatches = [registry.ready_to_dispatch(j["id"]) for j in (held, waiting)]
    assert [ok for ok, _ in dispatches] == [True, False]
    claim = registry.claim(held["id"], dispatches[0][1], "worker-a")
    assert claim.action == "run"
    registry.r.hset(f"saeq:job:{held['id']}", "started_at", str(time.time() - 10))
    _, ended = registry.reap(time_limit_grace_s=0)
    assert ended == [held["id"]]
    start_waiting(registry, "lab", send)
    return held["id"], claim.token, waiting["id"], sent


def test_a_job_ended_under_its_worker_keeps_the_slot_until_the_worker_lets_go(registry):
    held, token, waiting, sent = _held_past_its_limit(registry)
    job = registry.get(held)
    assert (job["state"], job["error"]["code"]) == ("failed", "time_limit")
    assert sent == [] and registry.usage("lab") == {"active": 1, "waiting": 1}
    assert registry.heartbeat(held, token) == (True, True)  # still the owner, told to stop

    assert registry.finish(held, token, "cancelled")  # the worker stops and lets go
    assert registry.get(held)["error"] == job["error"]  # its end stays the reaper's
    assert [e["phase"] for e in registry.events(held)][-1] == "released"
    start_waiting(registry, "lab", lambda j, d: sent.append(j["id"]))
    assert sent == [waiting]


def test_a_worker_lost_while_holding_an_ended_job_frees_the_slot_when_its_lease_expires(registry):
    held, token, waiting, sent = _held_past_its_limit(registry)
    registry.reap(time_limit_grace_s=0)
    assert registry.usage("lab")["active"] == 1  # the lease is alive: a worker still computes
    registry.r.delete(f"saeq:job:{held}:lease")  # what its expiry does
    _, ended = registry.reap(time_limit_grace_s=0)
    assert ended == [held] and registry.usage("lab") == {"active": 0, "waiting": 1}
    assert "lease expired" in registry.events(held)[-1]["message"]
    start_waiting(registry, "lab", lambda j, d: sent.append(j["id"]))
    assert sent == [waiting]
    assert not registry.finish(held, token, "cancelled")  # a late let-go changes nothing
    assert registry.get(held)["state"] == "failed"
