"""The job state machine on a real Redis: every legal move succeeds through the registry call that
makes it, every illegal one is refused as the registry refuses it, and the table in
saeq.specs.states is what the registry actually does (a test walks it)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import redis

from saeq.platform import redis_keys
from saeq.platform.registry import Registry
from saeq.platform.teams import TeamQuota
from saeq.specs.states import OPEN, STATES, TERMINAL, TRANSITIONS, can_move, is_terminal

DB = 14
"""A database of its own, flushed first: the reaper reads every job."""


@pytest.fixture
def registry(redis_srv) -> Registry:
    client = redis.Redis.from_url(f"{redis_srv.url.rsplit('/', 1)[0]}/{DB}", decode_responses=True)
    client.flushdb()
    reg = Registry(client, lease_ttl_s=30)
    reg.teams.set_quota("lab", TeamQuota(max_running=10_000))
    return reg


@dataclass
class Job:
    id: str
    dispatch_id: str
    token: str = ""


def job_in(registry: Registry, state: str) -> Job:
    """A fresh job of team lab in `state`, reached the way a deployment reaches it: created and
    sent (queued), claimed by worker-a (running), then finished by it (an end)."""
    created, _ = registry.create(kind="harvest", spec={}, queue="cpu", depends_on=[], team="lab")
    ok, dispatch_id = registry.ready_to_dispatch(created["id"])
    assert ok and dispatch_id
    job = Job(created["id"], dispatch_id)
    if state == "queued":
        return job
    claim = registry.claim(job.id, dispatch_id, "worker-a")
    assert claim.action == "run"
    job.token = claim.token
    if state != "running":
        assert registry.finish(job.id, claim.token, state, error=None if state == "succeeded" else {"code": state})
    assert state_of(registry, job) == state
    return job


def state_of(registry: Registry, job: Job) -> str:
    record = registry.get(job.id)
    assert record is not None
    return record["state"]


def lose_worker(registry: Registry, job: Job) -> None:
    """The worker died: its lease is gone (as if its TTL ran out)."""
    registry.r.delete(redis_keys.job_lease(job.id))


# ---- legal moves -------------------------------------------------------------------------------


def test_queued_to_running_by_a_claim(registry):
    job = job_in(registry, "queued")
    claim = registry.claim(job.id, job.dispatch_id, "worker-a")
    assert (claim.action, claim.attempt) == ("run", 1) and claim.token
    record = registry.get(job.id)
    assert (record["state"], record["worker"], record["attempts"]) == ("running", "worker-a", 1)
    assert registry.heartbeat(job.id, claim.token) == (True, False)


def test_queued_to_cancelled_by_a_cancel_request(registry):
    job = job_in(registry, "queued")
    assert registry.request_cancel(job.id)["state"] == "cancelled"
    assert registry.get(job.id)["error"]["code"] == "cancelled"


def test_queued_to_cancelled_by_a_claim_that_sees_the_cancel_flag(registry):
    job = job_in(registry, "queued")
    registry.r.hset(redis_keys.job(job.id), "cancel_requested", "true")
    claim = registry.claim(job.id, job.dispatch_id, "worker-a")
    assert (claim.action, claim.reason) == ("skip", "cancelled")
    assert state_of(registry, job) == "cancelled"


def test_queued_to_failed_by_a_claim_out_of_attempts(registry):
    job = job_in(registry, "queued")
    registry.r.hset(redis_keys.job(job.id), "attempts", "3")
    claim = registry.claim(job.id, job.dispatch_id, "worker-a")
    assert (claim.action, claim.reason) == ("skip", "attempts exhausted")
    assert registry.get(job.id)["error"]["code"] == "worker_lost"


def test_queued_to_failed_when_a_dependency_failed(registry):
    upstream = job_in(registry, "failed")
    created, _ = registry.create(kind="train", spec={}, queue="cpu", depends_on=[upstream.id], team="lab")
    assert registry.ready_to_dispatch(created["id"]) == (False, None)
    record = registry.get(created["id"])
    assert (record["state"], record["error"]["code"]) == ("failed", "upstream_failed")


@pytest.mark.parametrize("end", TERMINAL)
def test_running_to_each_end_by_its_worker(registry, end):
    job = job_in(registry, "running")
    assert registry.finish(job.id, job.token, end, manifest_key="m.json" if end == "succeeded" else None)
    record = registry.get(job.id)
    assert record["state"] == end and record["finished_at"] is not None
    assert registry.usage("lab") == {"active": 0, "waiting": 0}  # its slot is free
    assert not registry.r.exists(redis_keys.job_lease(job.id))


def test_running_to_queued_when_its_worker_is_lost(registry):
    job = job_in(registry, "running")
    lose_worker(registry, job)
    resend, ended = registry.reap()
    assert [(j["id"], bool(d)) for j, d in resend] == [(job.id, True)] and ended == []
    assert state_of(registry, job) == "queued"
    claim = registry.claim(job.id, resend[0][1], "worker-b")  # the new message runs it again
    assert (claim.action, claim.attempt) == ("run", 2)


def test_running_to_failed_when_its_worker_is_lost_on_the_last_attempt(registry):
    job = job_in(registry, "running")
    registry.r.hset(redis_keys.job(job.id), "attempts", "3")
    lose_worker(registry, job)
    assert registry.reap() == ([], [job.id])
    assert registry.get(job.id)["error"]["code"] == "worker_lost"


def test_running_to_cancelled_when_cancel_was_asked_and_its_worker_is_lost(registry):
    job = job_in(registry, "running")
    assert registry.request_cancel(job.id)["state"] == "running"  # asked: the worker polls the flag
    assert registry.heartbeat(job.id, job.token) == (True, True)
    lose_worker(registry, job)
    assert registry.reap() == ([], [job.id])
    assert state_of(registry, job) == "cancelled"


def test_running_to_failed_past_its_time_limit(registry):
    created, _ = registry.create(kind="harvest", spec={}, queue="cpu", depends_on=[], team="lab", time_limit_s=1)
    _, dispatch_id = registry.ready_to_dispatch(created["id"])
    claim = registry.claim(created["id"], dispatch_id, "worker-a")
    registry.r.hset(redis_keys.job(created["id"]), "started_at", str(time.time() - 10))
    assert registry.reap(time_limit_grace_s=0) == ([], [created["id"]])
    assert registry.get(created["id"])["error"]["code"] == "time_limit"
    assert registry.heartbeat(created["id"], claim.token) == (True, True)  # its worker is told to stop


# ---- illegal moves -----------------------------------------------------------------------------


@pytest.mark.parametrize("end", TERMINAL)
def test_an_ended_job_is_never_finished_again(registry, end):
    job = job_in(registry, end)
    before = registry.get(job.id)
    for state in TERMINAL:
        assert registry.finish(job.id, job.token, state) is False  # its lease went with its end
        assert registry.finish_unowned(job.id, state) is False
    assert registry.request_cancel(job.id) == before
    assert registry.get(job.id) == before


@pytest.mark.parametrize("end", TERMINAL)
def test_an_ended_job_is_never_claimed(registry, end):
    job = job_in(registry, end)
    claim = registry.claim(job.id, job.dispatch_id, "worker-b")
    assert (claim.action, claim.reason) == ("skip", f"job already {end}")
    assert state_of(registry, job) == end


def test_a_cancelled_queued_job_is_not_claimed(registry):
    job = job_in(registry, "queued")
    registry.request_cancel(job.id)
    claim = registry.claim(job.id, job.dispatch_id, "worker-a")
    assert (claim.action, claim.reason) == ("skip", "job already cancelled")
    assert state_of(registry, job) == "cancelled"


def test_a_queued_job_is_not_finished_by_a_worker(registry):
    job = job_in(registry, "queued")
    for state in TERMINAL:
        assert registry.finish(job.id, "no-lease-token", state) is False
    assert state_of(registry, job) == "queued"


def test_a_stale_token_neither_renews_nor_finishes(registry):
    job = job_in(registry, "running")
    lose_worker(registry, job)
    (_, dispatch_id), *_ = registry.reap()[0]
    fresh = registry.claim(job.id, dispatch_id, "worker-b")
    assert fresh.action == "run"
    assert registry.heartbeat(job.id, job.token) == (False, False)  # the old worker is no owner
    assert registry.finish(job.id, job.token, "succeeded") is False
    record = registry.get(job.id)
    assert (record["state"], record["worker"]) == ("running", "worker-b")
    assert registry.heartbeat(job.id, fresh.token) == (True, False)


def test_a_claim_of_a_superseded_dispatch_or_a_held_lease_is_refused(registry):
    job = job_in(registry, "running")
    assert registry.claim(job.id, "an-old-dispatch", "worker-b").action == "skip"
    claim = registry.claim(job.id, job.dispatch_id, "worker-b")  # the same message, delivered twice
    assert (claim.action, claim.reason) == ("busy", "another worker holds the lease")
    assert registry.get(job.id)["worker"] == "worker-a"


def test_a_job_without_a_record_is_skipped(registry):
    claim = registry.claim("0" * 32, "d", "worker-a")
    assert (claim.action, claim.reason) == ("skip", "no such job")


# ---- the table is what the registry does -------------------------------------------------------

Move = Callable[[Registry, Job], object]


def _cancel_and_lose_worker(registry: Registry, job: Job) -> None:
    registry.request_cancel(job.id)
    lose_worker(registry, job)
    registry.reap()


def _lose_worker_and_reap(registry: Registry, job: Job) -> None:
    lose_worker(registry, job)
    registry.reap()


def _finish_as(end: str) -> Move:
    return lambda reg, job: reg.finish(job.id, job.token or "t", end)


MOVES: dict[str, Move] = {
    "claim": lambda reg, job: reg.claim(job.id, job.dispatch_id, "worker-b"),
    **{f"finish {end}": _finish_as(end) for end in TERMINAL},
    "fail unowned": lambda reg, job: reg.finish_unowned(job.id, "failed", error={"code": "upstream_failed"}),
    "cancel": lambda reg, job: reg.request_cancel(job.id),
    "cancel, worker lost": _cancel_and_lose_worker,
    "worker lost": _lose_worker_and_reap,
}
"""Every call by which the API, a worker or the reaper moves a job."""


@pytest.mark.parametrize("start", STATES)
def test_the_states_table_is_what_the_registry_does(registry, start):
    reached = set()
    for move in MOVES.values():
        job = job_in(registry, start)
        move(registry, job)
        if (now := state_of(registry, job)) != start:
            reached.add(now)
    assert reached == TRANSITIONS[start]


def test_the_table_covers_every_state_and_ends_are_final():
    assert set(TRANSITIONS) == set(STATES) and set(OPEN) | set(TERMINAL) == set(STATES)
    for src, dst in itertools.product(STATES, STATES):
        assert can_move(src, dst) == (dst in TRANSITIONS[src])
    assert all(is_terminal(s) and not TRANSITIONS[s] for s in TERMINAL)
    assert not can_move("archived", "queued")  # a foreign state moves nowhere
