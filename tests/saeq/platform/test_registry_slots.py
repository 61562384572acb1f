"""A team's running slot is freed only when no worker computes its job any more, on a real Redis:
a job the reaper ends past its time limit keeps its slot until its worker lets go or its lease
expires; only then does the team's next job start."""

from __future__ import annotations

import time

import pytest
import redis

from saeq.platform.registry import Registry, start_waiting
from saeq.platform.teams import TeamQuota

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
    send = lambda job, dispatch_id: sent.append(job["id"])
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


def test_a_record_ended_under_its_worker_expires_only_once_the_worker_lets_go(registry):
    registry.set_job_retention(60)
    held, token, _, _ = _held_past_its_limit(registry)
    assert registry.r.pttl(f"saeq:job:{held}") == -1  # held: no TTL, so it cannot expire with its slot
    assert registry.finish(held, token, "cancelled")
    assert 0 < registry.r.pttl(f"saeq:job:{held}") <= 60_000
    assert 0 < registry.r.pttl(f"saeq:job:{held}:events") <= 60_000


def test_a_lost_workers_held_job_expires_once_its_lease_does(registry):
    registry.set_job_retention(60)
    held, _, _, _ = _held_past_its_limit(registry)
    registry.r.delete(f"saeq:job:{held}:lease")
    registry.reap(time_limit_grace_s=0)
    assert 0 < registry.r.pttl(f"saeq:job:{held}") <= 60_000


def test_a_worker_never_brings_back_a_record_that_is_gone(registry):
    job, _ = registry.create(kind="harvest", spec={}, queue="cpu", depends_on=[], team="lab")
    ok, dispatch_id = registry.ready_to_dispatch(job["id"])
    claim = registry.claim(job["id"], dispatch_id, "worker-a")
    for key in (f"saeq:job:{job['id']}", f"saeq:job:{job['id']}:events"):
        registry.r.delete(key)  # expired or purged under its worker
    assert registry.heartbeat(job["id"], claim.token) == (True, True)  # told to stop
    registry.report(job["id"], {"fraction": 0.5})
    registry.event(job["id"], "train", "half way")
    assert not registry.r.exists(f"saeq:job:{job['id']}", f"saeq:job:{job['id']}:events")


def test_the_reaper_frees_the_slot_of_a_running_job_whose_record_is_a_partial_hash(registry):
    """What an older heartbeat left of an expired record: one field, no state."""
    job, _ = registry.create(kind="harvest", spec={}, queue="cpu", depends_on=[], team="lab")
    _, dispatch_id = registry.ready_to_dispatch(job["id"])
    registry.claim(job["id"], dispatch_id, "worker-a")
    registry.r.delete(f"saeq:job:{job['id']}", f"saeq:job:{job['id']}:lease")
    registry.r.hset(f"saeq:job:{job['id']}", "heartbeat_at", "1.0")
    assert registry.usage("lab")["active"] == 1
    registry.reap(time_limit_grace_s=0)  # no KeyError
    assert registry.usage("lab")["active"] == 0 and not registry.r.sismember("saeq:running", job["id"])
    nxt, _ = registry.create(kind="harvest", spec={}, queue="cpu", depends_on=[], team="lab")
    assert registry.ready_to_dispatch(nxt["id"])[0]  # the slot is free for the team's next job


def test_a_dependency_gone_before_the_create_script_is_refused_and_leaves_no_key(registry):
    from saeq.platform.registry import MissingDependency

    dep, _ = registry.create(kind="harvest", spec={}, queue="cpu", depends_on=[], team="lab")
    registry.r.delete(f"saeq:job:{dep['id']}")  # expired or purged after the API checked it
    with pytest.raises(MissingDependency) as e:
        registry.create(kind="train", spec={}, queue="cpu", depends_on=[dep["id"]], team="lab")
    assert e.value.index == 0 and not registry.r.exists(f"saeq:job:{dep['id']}:dependents")
    assert registry.stored_jobs("lab") == 1  # the dependency's index entry only: no new record


def test_a_large_spec_stored_for_a_create_that_failed_is_deleted(registry, tmp_path):
    from saeq.platform.registry import INLINE_SPEC_BYTES
    from saeq.platform.store import LocalStore

    store = LocalStore(tmp_path)
    with_store = Registry(registry.r, spec_store=store)
    registry.r.set("saeq:team:lab:open", "not a set")  # the script fails (WRONGTYPE) after the spec is put
    with pytest.raises(redis.ResponseError):
        with_store.create(
            kind="steer",
            spec={"prompts": ["x" * INLINE_SPEC_BYTES]},
            queue="cpu",
            depends_on=[],
            team="lab",
            max_queued=5,
        )
    assert [i.key for i in store.list("")] == []


def test_the_reaper_sends_a_ready_job_that_was_created_but_never_sent(registry):
    """The API died (or lost Redis) between creating a job and sending it, and its client never
    retried: the reaper sends it once it is ready, and leaves alone what waits for a dependency."""
    registry.teams.set_quota("lab", TeamQuota(max_running=5))
    stranded, _ = registry.create(kind="harvest", spec={}, queue="cpu", depends_on=[], team="lab")
    blocked, _ = registry.create(kind="train", spec={}, queue="cpu", depends_on=[stranded["id"]], team="lab")
    for job in (stranded, blocked):
        registry.r.hset(f"saeq:job:{job['id']}", "created_at", str(time.time() - 120))
    fresh, _ = registry.create(kind="harvest", spec={}, queue="cpu", depends_on=[], team="lab")  # its API sends it
    resend, _ = registry.reap(lost_after_s=60, waiting=set)
    assert [job["id"] for job, _ in resend] == [stranded["id"]]
    assert registry.get(stranded["id"])["dispatch_id"] == resend[0][1]
    assert not registry.get(blocked["id"])["dispatched"] and not registry.get(fresh["id"])["dispatched"]
    assert registry.reap(lost_after_s=60, waiting=set)[0] == []  # sent once
