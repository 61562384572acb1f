"""Preemption on a real Redis: a request reaches the worker's heartbeat side, the requeue puts the
job back in its team's waiting line with its slot free and its attempt given back, a cancel wins,
and a job past its time limit is not given more time."""

from __future__ import annotations

import time

import pytest
import redis

from saeq.platform import redis_keys
from saeq.platform.registry import Registry, start_waiting
from saeq.platform.teams import TeamQuota

DB = 13
"""A database of its own, flushed first."""


@pytest.fixture
def registry(redis_srv) -> Registry:
    client = redis.Redis.from_url(f"{redis_srv.url.rsplit('/', 1)[0]}/{DB}", decode_responses=True)
    client.flushdb()
    reg = Registry(client, lease_ttl_s=30, max_attempts=1)
    reg.teams.set_quota("lab", TeamQuota(max_running=1))
    return reg


def running(registry: Registry, **kw) -> tuple[str, str]:
    """A job of team lab claimed by worker-a -> (id, lease token)."""
    created, _ = registry.create(kind="train", spec={}, queue="cpu", depends_on=[], team="lab", **kw)
    ok, dispatch_id = registry.ready_to_dispatch(created["id"])
    assert ok and dispatch_id
    claim = registry.claim(created["id"], dispatch_id, "host:1")
    assert claim.action == "run"
    return created["id"], claim.token


def phases(registry: Registry, job_id: str) -> list[str]:
    return [e["phase"] for e in registry.events(job_id)]


def test_a_preempted_job_is_queued_again_with_its_slot_free_and_its_attempt_given_back(registry):
    job_id, token = running(registry, priority=3)
    assert registry.preempt_requested(job_id) is None
    assert registry.request_preempt(job_id, "team b is under its share")
    assert registry.preempt_requested(job_id) == "team b is under its share"
    # The one slot is held: a second job of the team waits.
    other, _ = registry.create(kind="train", spec={}, queue="cpu", depends_on=[], team="lab")
    assert registry.ready_to_dispatch(other["id"]) == (False, None)

    assert registry.requeue_preempted(job_id, token, "team b is under its share", tokens=4096) == "queued"
    job = registry.get(job_id)
    assert job is not None
    assert (job["state"], job["dispatched"], job["attempts"], job["preemptions"]) == ("queued", False, 0, 1)
    assert job["preempt"] is None and registry.preempt_requested(job_id) is None
    assert job["last_started_at"] >= job["started_at"]
    assert not registry.r.exists(redis_keys.job_lease(job_id))
    assert not registry.r.sismember(redis_keys.RUNNING, job_id)
    assert registry.usage("lab") == {"active": 0, "waiting": 2}
    # Its priority keeps it ahead of the newer, lower-priority job in the team's line.
    assert registry.next_waiting("lab") == job_id
    event = registry.events(job_id)[-1]
    assert (event["phase"], event["figures"]) == ("preempted", {"reason": "team b is under its share", "tokens": 4096})

    sent: list[str] = []
    start_waiting(registry, "lab", lambda job, dispatch_id: sent.append(dispatch_id))
    assert len(sent) == 1
    # max_attempts=1: the preempted attempt was not spent, so the job may run again.
    again = registry.claim(job_id, sent[0], "host:2")
    assert (again.action, again.attempt) == ("run", 1)
    assert registry.finish(job_id, again.token, "succeeded")
    assert phases(registry, job_id)[-4:] == ["preempting", "preempted", "running", "succeeded"]
    assert registry.get(job_id)["preemptions"] == 1  # type: ignore[index]


def test_the_reaper_neither_fails_nor_resends_a_preempted_job(registry):
    job_id, token = running(registry)
    registry.request_preempt(job_id, "drain")
    assert registry.requeue_preempted(job_id, token, "drain") == "queued"
    resend, ended = registry.reap(0.0, lost_after_s=0.0, waiting=set)
    assert (resend, ended) == ([], [])  # waiting for its slot: the scheduler sends it, not the reaper
    assert registry.get(job_id)["state"] == "queued"  # type: ignore[index]


def test_a_cancel_wins_over_a_preemption(registry):
    job_id, token = running(registry)
    assert registry.request_preempt(job_id, "drain")
    registry.request_cancel(job_id)
    assert not registry.request_preempt(job_id, "again")  # a job being cancelled is not asked to yield
    assert registry.requeue_preempted(job_id, token, "drain") == "cancelled"
    job = registry.get(job_id)
    assert job is not None and job["state"] == "cancelled"
    assert registry.usage("lab") == {"active": 0, "waiting": 0}


def test_preemption_gives_no_more_time_past_the_time_limit(registry):
    job_id, token = running(registry, time_limit_s=0.2)
    registry.request_preempt(job_id, "drain")
    time.sleep(0.3)
    assert registry.requeue_preempted(job_id, token, "drain") == "failed"
    job = registry.get(job_id)
    assert job is not None and (job["state"], job["error"]["code"]) == ("failed", "time_limit")
    assert registry.usage("lab") == {"active": 0, "waiting": 0}


def test_only_dispatched_jobs_are_asked_and_only_the_lease_holder_requeues(registry):
    created, _ = registry.create(kind="train", spec={}, queue="cpu", depends_on=[], team="lab")
    assert not registry.request_preempt(created["id"], "not sent yet")
    assert not registry.request_preempt("nope", "no such job")
    job_id, token = running(registry)
    registry.request_preempt(job_id, "drain")
    assert registry.requeue_preempted(job_id, "another worker's token", "drain") is None
    assert registry.get(job_id)["state"] == "running"  # type: ignore[index]
    assert registry.finish(job_id, token, "succeeded")
    assert not registry.request_preempt(job_id, "ended")


def test_running_on_finds_the_jobs_of_given_worker_processes(registry):
    job_id, _ = running(registry)
    assert registry.running_on({"host:1"}) == [job_id]
    assert registry.running_on({"host:2"}) == []


def test_a_lost_worker_requeued_by_the_reaper_leaves_no_stale_yield_request(registry):
    registry.max_attempts = 2  # one left after the lost one
    job_id, _ = running(registry)
    registry.request_preempt(job_id, "drain")
    registry.r.delete(redis_keys.job_lease(job_id))  # the drained worker died before it yielded
    resend, _ = registry.reap(0.0)
    assert [job["id"] for job, _ in resend] == [job_id]
    assert registry.preempt_requested(job_id) is None  # its next attempt is not told to yield at once


def test_requests_in_one_call_ask_only_the_dispatched_jobs_not_being_cancelled(registry):
    registry.teams.set_quota("lab", TeamQuota(max_running=3))
    asked_one, _ = running(registry)
    cancelling, _ = running(registry)
    registry.request_cancel(cancelling)
    waiting, _ = registry.create(kind="train", spec={}, queue="cpu", depends_on=[], team="lab")
    requests = [(asked_one, "r1"), (cancelling, "r2"), (waiting["id"], "r3"), ("nope", "r4")]
    assert registry.request_preempts(requests) == [asked_one]
    assert registry.preempt_requested(asked_one) == "r1"
    assert [registry.preempt_requested(j) for j in (cancelling, waiting["id"])] == [None, None]
    assert phases(registry, asked_one).count("preempting") == 1
    assert "preempting" not in phases(registry, cancelling) + phases(registry, waiting["id"])
    assert not registry.r.exists(redis_keys.job_events("nope"))  # no log outlives a missing record
