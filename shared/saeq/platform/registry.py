"""Job records in Redis: the one source of truth for a job's state, shared by API and workers.

Celery's result backend is not used: a record outlives broker messages and API restarts.
Every state change is a compare-and-set (a Redis transaction, or a Lua script), so the API, the
reaper and a worker never overwrite each other. States (saeq.specs.states): queued -> running ->
succeeded | failed | cancelled. A worker holds a lease (a key with a TTL it renews); a running job
whose lease expired lost its worker, and the reaper dispatches it again or fails it as
`worker_lost` after `max_attempts`. The reaper also sends again a job whose message died with a
worker before its claim, and fails as `time_limit` a job long past its time limit that its worker
did not stop.

`Registry` is composed of one part per concern: records and ends (job_core), create and dispatch
(job_submit), claims and leases (job_leases), the reaper (job_reaper), retention and purge
(job_retention), uploads; keys in redis_keys, scripts in lua_scripts. This module keeps the names
the API, the workers and the client import.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

from saeq.platform import job_counts, redis_keys
from saeq.platform.dispatch import QUEUES
from saeq.platform.job_core import JobCore
from saeq.platform.job_leases import Leasing
from saeq.platform.job_model import (
    CENSUS_FIELDS,
    DEFAULT_RETENTION_S,
    DURATION_BUCKETS_S,
    IDEMPOTENCY_TTL_S,
    INLINE_SPEC_BYTES,
    SUMMARY_FIELDS,
    Claim,
    IdempotencyConflict,
    MissingDependency,
    QuotaExceeded,
    new_id,
    time_limit_message,
)
from saeq.platform.job_preempt import Preempting
from saeq.platform.job_reaper import Reaping
from saeq.platform.job_retention import Purging
from saeq.platform.redis_client import REDIS_RETRY_S, RetryFor, connect
from saeq.platform.scheduler import schedule
from saeq.platform.uploads import Uploads
from saeq.specs.states import STATES, TERMINAL

__all__ = [
    "DEFAULT_RETENTION_S",
    "DURATION_BUCKETS_S",
    "IDEMPOTENCY_TTL_S",
    "INLINE_SPEC_BYTES",
    "REDIS_RETRY_S",
    "STATES",
    "SUMMARY_FIELDS",
    "TERMINAL",
    "Claim",
    "IdempotencyConflict",
    "JobCore",
    "MissingDependency",
    "QuotaExceeded",
    "Registry",
    "RetryFor",
    "Send",
    "after_finish",
    "dispatch_ready",
    "new_id",
    "start_waiting",
    "time_limit_message",
]


class Registry(Leasing, Reaping, Purging, Uploads, Preempting):
    """Every job record, lease and upload of a deployment, in one Redis."""

    @classmethod
    def from_url(cls, url: str, *, retry_s: float = REDIS_RETRY_S, **kw) -> Registry:
        """A registry whose calls retry for `retry_s` while Redis is unreachable."""
        return cls(connect(url, retry_s=retry_s), **kw)

    def try_lock(self, name: str, ttl_s: float) -> bool:
        return bool(self.r.set(redis_keys.lock(name), "1", nx=True, px=int(ttl_s * 1000)))

    def stats(self) -> dict[str, dict[str, str]]:
        """Raw counters for the metrics endpoint."""
        return {
            name: cast(dict[str, str], self.r.hgetall(redis_keys.stats(name)))
            for name in ("submitted", "finished", "duration", "attempts_lost")
        }

    def job_counts(self) -> job_counts.JobCounts:
        """Stored jobs by kind and state, by team and state, and each queue's oldest job waiting
        for a worker, from the counters every state change keeps (saeq.platform.job_counts): a
        few reads, whatever the number of jobs."""
        return job_counts.read(self.r, QUEUES)

    def census(self) -> list[dict[str, Any]]:
        """The fields the job counts follow (kind, state, queue, team, created_at, dispatched) of
        every stored job, read in one round trip: O(stored jobs), the reference the counts are
        tested against."""
        ids = cast(list[str], self.r.zrange(redis_keys.ALL_JOBS, 0, -1))
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(redis_keys.job(job_id), *CENSUS_FIELDS)
        return [
            {f: json.loads(v) if v is not None else None for f, v in zip(CENSUS_FIELDS, row, strict=False)}
            for row in (pipe.execute() if ids else [])
            if row[0] is not None
        ]


Send = Callable[[dict, str], None]
"""send(job, dispatch_id) puts a message for the job on its queue."""


def dispatch_ready(registry: Registry, job_id: str, send: Send, job: dict | None = None) -> str | None:
    """Send the job to its queue if its dependencies and its team's slots allow. Returns the
    dispatch id if sent. `job`: the record, when the caller holds it."""
    job = job or registry.get(job_id)
    ok, dispatch_id = registry.ready_to_dispatch(job_id, job)
    if ok and job is not None and dispatch_id is not None:  # ok: both are
        send(job, dispatch_id)  # reads only id, kind and queue, which never change
        return dispatch_id
    if job and job["depends_on"] and (now := registry.get(job_id)) and now["state"] == "failed":
        after_finish(registry, job_id, send)  # failed here for a failed dependency: tell its dependents
    return None


def start_waiting(registry: Registry, team: str, send: Send) -> None:
    """Fill free slots with waiting jobs, `team`'s among every team's: the fair-share scheduler
    (saeq.platform.scheduler) decides across teams, so a slot freed for one team may go to another
    whose turn it is."""
    del team  # kept for callers that name the team whose slot changed
    schedule(registry, send)


def after_finish(registry: Registry, job_id: str, send: Send) -> None:
    """A job ended: start (or fail) the jobs that waited for it, and give its slot (and its
    queue's capacity) to the waiting job whose turn it is, of any team (saeq.platform.scheduler)."""
    for dependent in registry.dependents(job_id):
        dispatch_ready(registry, dependent, send)
    schedule(registry, send)
