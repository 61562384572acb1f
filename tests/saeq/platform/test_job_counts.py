"""The job counts on a real Redis: after random sequences of every state change a deployment makes
(create, dispatch, schedule, claim, finish, cancel, preemption, lost workers requeued, overdue jobs
failed, lost messages sent again, records expired by retention or purged), the counters /metrics
reads equal what `Registry.census()` tallies from every record; a recount rebuilds them."""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest
import redis

from saeq.platform import redis_keys
from saeq.platform.dispatch import QUEUES
from saeq.platform.registry import Registry, start_waiting
from saeq.platform.teams import TeamQuota
from saeq.specs.states import TERMINAL

DB = 10
"""A database of its own, flushed first: the census reads every job."""
SHORT_RETENTION_S = 0.05


@pytest.fixture
def registry(redis_srv) -> Registry:
    client = redis.Redis.from_url(f"{redis_srv.url.rsplit('/', 1)[0]}/{DB}", decode_responses=True)
    client.flushdb()
    reg = Registry(client, lease_ttl_s=30, max_attempts=2)
    reg.teams.set_quota("lab", TeamQuota(max_running=2))  # some of its jobs wait for a slot
    reg.teams.set_quota("ops", TeamQuota(max_running=100))
    reg.set_job_retention(3600)
    return reg


def census_counts(registry: Registry) -> tuple[dict, dict, dict]:
    census = registry.census()
    by_kind = Counter((j["kind"], j["state"]) for j in census)
    by_team = Counter((j["team"] or "default", j["state"]) for j in census)
    oldest = {
        q: min(
            (j["created_at"] for j in census if j["state"] == "queued" and j["dispatched"] and j["queue"] == q),
            default=None,
        )
        for q in QUEUES
    }
    return dict(by_kind), dict(by_team), oldest


def counted(registry: Registry) -> tuple[dict, dict, dict]:
    counts = registry.job_counts()
    assert min([0, *counts.by_kind.values(), *counts.by_team.values()]) == 0, counts  # never below 0
    return _nonzero(counts.by_kind), _nonzero(counts.by_team), counts.oldest_sent_at


def _nonzero(counts: dict) -> dict:
    """A pair that had jobs stays in the counters at 0; the census has no such pair."""
    return {k: v for k, v in counts.items() if v}


class Deployment:
    """Drives a registry as the API, the workers and the reaper would, at random."""

    def __init__(self, registry: Registry, rng: random.Random):
        self.reg, self.rng = registry, rng
        self.ids: list[str] = []
        self.dispatch: dict[str, str] = {}  # job -> its current message's dispatch id
        self.token: dict[str, str] = {}  # running job -> its worker's lease token

    def state(self, job_id: str) -> dict | None:
        return self.reg.get(job_id)

    def pick(self, accept) -> str | None:
        jobs = [j for j in (self.state(i) for i in self.rng.sample(self.ids, min(len(self.ids), 8))) if j and accept(j)]
        return jobs[0]["id"] if jobs else None

    def send(self, job: dict, dispatch_id: str) -> None:
        self.dispatch[job["id"]] = dispatch_id

    def create(self) -> None:
        deps = [self.rng.choice(self.ids)] if self.ids and self.rng.random() < 0.2 else []
        deps = [d for d in deps if self.reg.get(d)]
        job, _ = self.reg.create(
            kind=self.rng.choice(["harvest", "train", "label"]),
            spec={},
            queue=self.rng.choice(QUEUES),
            depends_on=deps,
            team=self.rng.choice(["lab", "ops", "default"]),
            time_limit_s=0.01 if self.rng.random() < 0.15 else None,
        )
        self.ids.append(job["id"])

    def dispatch_one(self) -> None:
        if job_id := self.pick(lambda j: j["state"] == "queued" and not j["dispatched"]):
            ok, dispatch_id = self.reg.ready_to_dispatch(job_id)
            if ok and dispatch_id:
                self.dispatch[job_id] = dispatch_id

    def schedule(self) -> None:
        start_waiting(self.reg, "lab", self.send)

    def claim(self) -> None:
        if job_id := self.pick(lambda j: j["state"] == "queued" and j["dispatched"] and j["id"] in self.dispatch):
            claim = self.reg.claim(job_id, self.dispatch[job_id], "host:1")
            if claim.action == "run":
                self.token[job_id] = claim.token

    def finish(self) -> None:
        if job_id := self.pick(lambda j: j["id"] in self.token):
            self.reg.finish(job_id, self.token.pop(job_id), self.rng.choice(["succeeded", "failed"]))

    def cancel(self) -> None:
        if job_id := self.pick(lambda j: j["state"] not in TERMINAL):
            self.reg.request_cancel(job_id)

    def preempt(self) -> None:
        if job_id := self.pick(lambda j: j["state"] == "running" and j["id"] in self.token):
            self.reg.request_preempt(job_id, "a test")
            self.reg.requeue_preempted(job_id, self.token.pop(job_id), "a test")

    def lose_worker(self) -> None:
        if job_id := self.pick(lambda j: j["id"] in self.token):
            self.reg.r.delete(redis_keys.job_lease(job_id))
            self.token.pop(job_id)
        self.reap()

    def reap(self) -> None:
        resend, _ = self.reg.reap(0.0, time_limit_grace_s=0.0, lost_after_s=0.0, waiting=set)
        for job, dispatch_id in resend:
            self.dispatch[job["id"]] = dispatch_id

    def end_soon(self) -> None:
        """An end whose record expires within SHORT_RETENTION_S."""
        self.reg.set_job_retention(SHORT_RETENTION_S)
        self.rng.choice([self.finish, self.cancel])()
        self.reg.set_job_retention(3600)

    def purge(self) -> None:
        self.reg.purge(team=self.rng.choice(["lab", "ops", "default"]))

    def sweep(self) -> None:
        self.reg.sweep_expired()

    def step(self) -> None:
        ops = [
            (self.create, 6),
            (self.dispatch_one, 4),
            (self.schedule, 1),
            (self.claim, 4),
            (self.finish, 3),
            (self.cancel, 1),
            (self.preempt, 1),
            (self.lose_worker, 1),
            (self.reap, 1),
            (self.end_soon, 1),
            (self.purge, 0.2),
            (self.sweep, 0.5),
        ]
        op = self.rng.choices([o for o, _ in ops], weights=[w for _, w in ops])[0]
        op()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_counts_equal_the_census_after_random_state_changes(registry, seed):
    deployment = Deployment(registry, random.Random(seed))
    seen: set[str] = set()
    for step in range(300):
        deployment.step()
        if step % 25 == 24:
            time.sleep(2 * SHORT_RETENTION_S)  # the short-retention records are gone
            census = census_counts(registry)
            assert counted(registry) == census, f"seed {seed}, step {step}"
            seen |= {state for _, state in census[0]}
    # The walk reached them at some checkpoint (at its last one alone, whether a job was running
    # hung on how fast the reaper's 0.01 s time limits ran out).
    assert {"queued", "running"} <= seen and seen & set(TERMINAL), seen


def test_an_expired_record_leaves_the_counts(registry):
    registry.set_job_retention(SHORT_RETENTION_S)
    job, _ = registry.create(kind="train", spec={}, queue="gpu", depends_on=[], team="ops")
    registry.request_cancel(job["id"])
    assert registry.job_counts().by_team[("ops", "cancelled")] == 1
    time.sleep(2 * SHORT_RETENTION_S)
    assert registry.job_counts().by_team[("ops", "cancelled")] == 0
    assert not registry.r.zcard(redis_keys.COUNT_EXPIRING)  # each expired job is dropped once


def test_a_recount_rebuilds_counters_missing_or_wrong(registry):
    deployment = Deployment(registry, random.Random(7))
    for _ in range(150):
        deployment.step()
    time.sleep(2 * SHORT_RETENTION_S)
    expected = census_counts(registry)
    # An upgrade from saeq without counters: none of the keys exist.
    registry.r.delete(redis_keys.COUNT_KIND_STATE, redis_keys.COUNT_TEAM_STATE, redis_keys.COUNT_VERSION)
    registry.r.delete(redis_keys.COUNT_EXPIRING, *(redis_keys.queue_sent(q) for q in QUEUES))
    assert counted(registry) == expected
    # A repair: counts gone wrong, and the version key deleted by an operator.
    registry.r.hset(redis_keys.COUNT_KIND_STATE, "train|queued", 99)
    registry.r.delete(redis_keys.COUNT_VERSION)
    assert counted(registry) == expected
    # The recount also rebuilt which ended jobs expire when: ending and expiring stay counted.
    for _ in range(100):
        deployment.step()
    time.sleep(2 * SHORT_RETENTION_S)
    assert counted(registry) == census_counts(registry)
