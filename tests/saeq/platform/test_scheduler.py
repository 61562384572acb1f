"""The fair-share scheduler on a real Redis with a fake `send`: dispatch gated by the advertised
capacity of a queue, teams served by usage per weight (ties: priority, then age), capacity freed
when a job ends, one pass at a time, the preemption rules and their guards, and jobs_ahead."""

from __future__ import annotations

import time

import pytest
import redis
from redis.connection import Connection

from saeq.platform import fair_share, pools, redis_keys, schedule_snapshot, scheduler
from saeq.platform.fair_share import SchedulingPolicy
from saeq.platform.registry import Registry, dispatch_ready
from saeq.platform.teams import TeamQuota
from saeq.specs.scheduling import WorkerAd

DB = 11
"""A database of its own, flushed first."""


@pytest.fixture
def registry(redis_srv) -> Registry:
    client = redis.Redis.from_url(f"{redis_srv.url.rsplit('/', 1)[0]}/{DB}", decode_responses=True)
    client.flushdb()
    fair_share.publish_policy(client, SchedulingPolicy(min_run_s=0.0))
    return Registry(client, lease_ttl_s=30)


class Sent(list):
    """A fake send: the ids of the jobs sent, in order, and their dispatch ids."""

    def __init__(self):
        super().__init__()
        self.dispatch: dict[str, str] = {}

    def __call__(self, job: dict, dispatch_id: str) -> None:
        self.append(job["id"])
        self.dispatch[job["id"]] = dispatch_id


def worker(registry: Registry, slots: int, queue: str = "q", name: str = "host:1") -> None:
    ad = WorkerAd(
        worker=name,
        queue=queue,
        device="cpu",
        device_name="cpu",
        memory_bytes=1 << 30,
        count=1,
        slots=slots,
        updated_at=time.time(),
    )
    pools.advertise(registry.r, ad, ttl_s=60)


def submit(registry: Registry, team: str, send: Sent, priority: int = 0, queue: str = "q") -> str:
    job, _ = registry.create(kind="train", spec={}, queue=queue, depends_on=[], team=team, priority=priority)
    dispatch_ready(registry, job["id"], send, job)
    return job["id"]


def run(registry: Registry, job_id: str, send: Sent, worker_name: str = "host:1") -> str:
    claim = registry.claim(job_id, send.dispatch[job_id], worker_name)
    assert claim.action == "run"
    return claim.token


def teams(registry: Registry, **weights: float) -> None:
    for team, weight in weights.items():
        registry.teams.set_quota(team, TeamQuota(max_running=100, share_weight=weight))


def test_without_advertised_workers_dispatch_is_not_gated(registry):
    teams(registry, a=1)
    send = Sent()
    ids = [submit(registry, "a", send) for _ in range(3)]
    assert send == ids


def test_capacity_gates_dispatch_and_an_end_frees_it_for_the_next(registry):
    teams(registry, a=1)
    worker(registry, slots=2)
    send = Sent()
    ids = [submit(registry, "a", send) for _ in range(4)]
    assert send == ids[:2]
    assert scheduler.schedule(registry, send) == []  # full
    registry.request_cancel(ids[0])  # sent, not claimed: cancelled at once, its capacity freed
    assert scheduler.schedule(registry, send) == [ids[2]]
    token = run(registry, ids[1], send)
    assert registry.finish(ids[1], token, "succeeded")
    assert scheduler.schedule(registry, send) == [ids[3]]
    assert registry.r.smembers(redis_keys.queue_dispatched("q")) == {ids[2], ids[3]}


def test_a_worker_that_appears_gets_the_waiting_work(registry):
    teams(registry, a=1)
    worker(registry, slots=1)
    send = Sent()
    ids = [submit(registry, "a", send) for _ in range(3)]
    assert send == ids[:1]
    worker(registry, slots=2, name="host:2")  # what the reaper's pass then finds
    assert scheduler.schedule(registry, send) == ids[1:]


def test_a_team_without_a_quota_of_its_own_is_scheduled_too(registry):
    worker(registry, slots=1)
    send = Sent()
    blocker = submit(registry, "default", send)
    adhoc = submit(registry, "adhoc", send)  # never given a key or a quota
    registry.request_cancel(blocker)
    assert scheduler.schedule(registry, send) == [adhoc]


def test_the_team_with_least_usage_per_weight_goes_first(registry):
    teams(registry, a=1, b=3, c=1)
    worker(registry, slots=1)
    send = Sent()
    blocker = submit(registry, "c", send)
    a = [submit(registry, "a", send) for _ in range(2)]
    b = [submit(registry, "b", send) for _ in range(2)]
    fair_share.add_usage(registry.r, "a", 10.0)
    fair_share.add_usage(registry.r, "b", 20.0)  # 20 / 3 < 10 / 1
    registry.request_cancel(blocker)
    assert scheduler.schedule(registry, send) == [b[0]]
    assert scheduler.jobs_ahead(registry, "a", 0, "q") == 3  # b's second (20/3 < 10), then a's two older
    registry.request_cancel(b[0])
    fair_share.add_usage(registry.r, "b", 20.0)  # 40 / 3 > 10
    assert scheduler.schedule(registry, send) == [a[0]]


def test_ties_go_to_the_higher_priority_head_then_the_older(registry):
    teams(registry, a=1, b=1, c=1)
    worker(registry, slots=1)
    send = Sent()
    blocker = submit(registry, "c", send)
    older = submit(registry, "a", send)
    newer_high = submit(registry, "b", send, priority=5)
    newer_low = submit(registry, "c", send)
    registry.request_cancel(blocker)
    assert scheduler.schedule(registry, send) == [newer_high]
    registry.request_cancel(newer_high)
    fair_share.add_usage(registry.r, "c", 0.0)  # a and c tie on usage: a's head is older
    assert scheduler.schedule(registry, send) == [older]
    assert newer_low not in send


def test_a_team_at_max_running_leaves_the_capacity_to_others(registry):
    registry.teams.set_quota("a", TeamQuota(max_running=1))
    teams(registry, b=1)
    worker(registry, slots=3)
    send = Sent()
    a = [submit(registry, "a", send) for _ in range(3)]
    b = submit(registry, "b", send)
    assert send == [a[0], b]
    assert scheduler.schedule(registry, send) == []
    assert registry.r.zcard(redis_keys.team("a", "waiting")) == 2


def test_a_pass_while_another_holds_the_lock_asks_it_to_run_again(registry):
    teams(registry, a=1)
    send = Sent()
    registry.r.set(redis_keys.lock("schedule"), "someone", px=5000)
    assert scheduler.schedule(registry, send) == []
    assert registry.r.exists(redis_keys.SCHEDULE_AGAIN)


def _full_queue_with(registry: Registry, send: Sent, team: str, priority: int = 0) -> tuple[str, str]:
    """One slot, held by a running job of `team` -> (its id, its lease token)."""
    worker(registry, slots=1)
    victim = submit(registry, team, send, priority=priority)
    return victim, run(registry, victim, send)


def test_a_higher_priority_job_of_the_same_team_preempts_its_lower_one(registry):
    teams(registry, a=1)
    send = Sent()
    victim, _ = _full_queue_with(registry, send, "a", priority=1)
    waiter = submit(registry, "a", send, priority=5)
    assert waiter not in send and registry.preempt_requested(victim) is None  # sent nowhere, asked nothing
    scheduler.schedule(registry, send)  # what the API does after a submit that waits
    reason = registry.preempt_requested(victim)
    assert reason is not None and waiter in reason
    scheduler.schedule(registry, send)
    assert [e["phase"] for e in registry.events(victim)].count("preempting") == 1  # once per waiter


def test_no_preemption_before_the_minimum_run_time_or_past_the_cap_or_against_opt_outs(registry):
    teams(registry, a=1)
    send = Sent()
    victim, _ = _full_queue_with(registry, send, "a", priority=1)
    fair_share.publish_policy(registry.r, SchedulingPolicy(min_run_s=3600.0))
    submit(registry, "a", send, priority=5)
    scheduler.schedule(registry, send)
    assert registry.preempt_requested(victim) is None  # ran less than min_run_s
    fair_share.publish_policy(registry.r, SchedulingPolicy(min_run_s=0.0, max_preemptions=1))
    registry.r.hset(redis_keys.job(victim), "preemptions", "1")
    scheduler.schedule(registry, send)
    assert registry.preempt_requested(victim) is None  # preempted max_preemptions times already
    registry.r.hset(redis_keys.job(victim), "preemptions", "0")
    registry.teams.set_quota("a", TeamQuota(max_running=100, preemptible=False))
    scheduler.schedule(registry, send)
    assert registry.preempt_requested(victim) is None  # its team opted out
    registry.teams.set_quota("a", TeamQuota(max_running=100, may_preempt=False))
    scheduler.schedule(registry, send)
    assert registry.preempt_requested(victim) is None  # the waiter's team opted out
    registry.teams.set_quota("a", TeamQuota(max_running=100))
    scheduler.schedule(registry, send)
    assert registry.preempt_requested(victim) is not None


def test_another_teams_job_is_preempted_by_priority_only_while_the_waiter_is_below_its_share(registry):
    teams(registry, a=1, b=1)
    send = Sent()
    victim, _ = _full_queue_with(registry, send, "b", priority=1)
    fair_share.add_usage(registry.r, "a", 70.0)  # a: share 0.7 of a target 0.5: over it
    fair_share.add_usage(registry.r, "b", 30.0)
    submit(registry, "a", send, priority=5)
    scheduler.schedule(registry, send)
    assert registry.preempt_requested(victim) is None
    fair_share.add_usage(registry.r, "b", 60.0)  # a: 70 / 160 = 0.44 < 0.5
    scheduler.schedule(registry, send)
    assert registry.preempt_requested(victim) is not None


def test_a_team_far_under_its_share_preempts_one_far_over_it_at_equal_priority(registry):
    teams(registry, a=1, b=1)
    send = Sent()
    victim, _ = _full_queue_with(registry, send, "b")
    fair_share.add_usage(registry.r, "a", 30.0)  # a: 0.3 / 0.5 = 0.6, not far under; b: 1.4
    fair_share.add_usage(registry.r, "b", 70.0)
    submit(registry, "a", send)
    scheduler.schedule(registry, send)
    assert registry.preempt_requested(victim) is None
    fair_share.add_usage(registry.r, "b", 100.0)  # a: 30 / 200 = 0.15 -> 0.3; b: 1.7
    scheduler.schedule(registry, send)
    reason = registry.preempt_requested(victim)
    assert reason is not None and "0.30" in reason and "1.70" in reason


def test_one_victim_per_waiting_job(registry):
    teams(registry, a=1)
    worker(registry, slots=2)
    send = Sent()
    victims = [submit(registry, "a", send, priority=1) for _ in range(2)]
    for v in victims:
        run(registry, v, send)
    submit(registry, "a", send, priority=5)
    scheduler.schedule(registry, send)
    asked = [v for v in victims if registry.preempt_requested(v)]
    assert len(asked) == 1
    submit(registry, "a", send, priority=5)  # a second waiter: the second victim
    scheduler.schedule(registry, send)
    assert all(registry.preempt_requested(v) for v in victims)


def test_a_pass_asks_all_its_victims_as_it_frees_the_lock_in_one_round_trip(registry, monkeypatch):
    teams(registry, a=1)
    worker(registry, slots=3)
    send = Sent()
    victims = [submit(registry, "a", send, priority=1) for _ in range(3)]
    for v in victims:
        run(registry, v, send)
    waiters = [submit(registry, "a", send, priority=5) for _ in range(3)]
    # Both scripts loaded first (a fresh Redis answers NOSCRIPT once: a load and a retry each).
    schedule_snapshot.read(registry)  # without the lock
    schedule_snapshot.release(registry, "not the lock's token")
    writes = [0]
    send_packed = Connection.send_packed_command

    def counted(self, command, check_health=True):
        writes[0] += 1
        return send_packed(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counted)
    assert scheduler.schedule(registry, send) == []  # the queue is full: nothing sent
    monkeypatch.undo()
    assert writes[0] == 2  # the snapshot, then the release with the three requests
    reasons = [registry.preempt_requested(v) for v in victims]
    assert all(reasons) and {w for w in waiters if any(w in r for r in reasons if r)} == set(waiters)
    assert [[e["phase"] for e in registry.events(v)].count("preempting") for v in victims] == [1, 1, 1]
    assert not registry.r.exists(redis_keys.lock("schedule"))


def test_a_pass_whose_lock_expired_asks_nothing_and_runs_again(registry):
    teams(registry, a=1)
    send = Sent()
    victim, _ = _full_queue_with(registry, send, "a", priority=1)
    assert schedule_snapshot.read(registry, lock_token="mine", lock_ttl_ms=5000) is not None
    registry.r.set(redis_keys.lock("schedule"), "another pass")  # ours expired; another took it
    assert schedule_snapshot.release(registry, "mine", [(victim, "a waiter")])  # run again
    assert registry.preempt_requested(victim) is None
    assert registry.r.get(redis_keys.lock("schedule")) == "another pass"  # not ours to free
