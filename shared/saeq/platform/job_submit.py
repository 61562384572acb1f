"""Creating jobs against their team's quotas, and dispatching them when their dependencies and
their team's slots allow.
"""

from __future__ import annotations

import json
import time
from typing import Any, cast

import redis

from saeq import keys
from saeq.platform import job_counts, pools, redis_keys
from saeq.platform.job_core import JobCore
from saeq.platform.job_model import (
    IDEMPOTENCY_TTL_S,
    INLINE_SPEC_BYTES,
    IdempotencyConflict,
    MissingDependency,
    QuotaExceeded,
    encode,
    event_entry,
    new_id,
    waiting_score,
)
from saeq.specs.records import RECORD_FORMAT

DISPATCHED, NO_TEAM_SLOT, NO_CAPACITY, NOT_QUEUED = 1, 0, 2, -1
"""What the dispatch script (lua_scripts.DISPATCH) answers."""
READ_CAPACITY = -2
"""try_dispatch's default capacity: read it now (the scheduler passes the one its pass read)."""


class Submitting(JobCore):
    """Create and dispatch."""

    def create(
        self,
        *,
        kind: str,
        spec: dict,
        queue: str,
        depends_on: list[str],
        name: str | None = None,
        team: str = "default",
        idempotency_key: str | None = None,
        request_digest: str = "",
        priority: int = 0,
        time_limit_s: float | None = None,
        max_queued: int | None = None,
        max_stored: int | None = None,
        submits_per_minute: int | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Store a queued job, counted against its team's quotas in the same step (one script), so
        concurrent submits never pass a limit together. Returns (job, created): an idempotency key
        seen before returns the job it created, or raises IdempotencyConflict when that request's
        `request_digest` differs. QuotaExceeded when the team has `max_queued` jobs waiting,
        `max_stored` records in any state, or made `submits_per_minute` submits in the last 60 s."""
        job_id, now = new_id(), time.time()
        record = self._new_record(job_id, now, kind, spec, queue, depends_on, name, team, priority, time_limit_s)
        stored = self._store_large_spec(record)
        deps = [k for dep in depends_on for k in (redis_keys.job_dependents(dep), redis_keys.job(dep))]
        no_limit = -1
        try:
            status, other = self._create(
                keys=[
                    redis_keys.job(job_id),
                    redis_keys.job_events(job_id),
                    redis_keys.ALL_JOBS,
                    redis_keys.team(team, "jobs"),
                    redis_keys.team(team, "open"),
                    redis_keys.team(team, "active"),
                    redis_keys.team(team, "ended"),
                    redis_keys.team(team, "submits"),
                    redis_keys.idempotency(team, idempotency_key or ""),
                    redis_keys.stats("submitted"),
                    redis_keys.SPECS_IN_STORE,
                    redis_keys.COUNT_KIND_STATE,
                    redis_keys.COUNT_TEAM_STATE,
                    *deps,
                ],
                args=[
                    job_id,
                    now,
                    no_limit if max_queued is None else max_queued,
                    no_limit if max_stored is None else max_stored,
                    no_limit if submits_per_minute is None else submits_per_minute,
                    request_digest,
                    IDEMPOTENCY_TTL_S if idempotency_key else 0,
                    kind,
                    json.dumps(event_entry("queued", f"{kind} job submitted", {})),
                    redis_keys.JOB_PREFIX,
                    int("spec_key" in stored),
                    job_counts.kind_field(kind, "queued"),
                    job_counts.team_field(team, "queued"),
                    *(x for kv in encode(stored).items() for x in kv),
                ],
            )
        except redis.RedisError:
            self._drop_unrecorded_spec(stored, job_id)
            raise
        if status == "created":
            return record, True
        if "spec_key" in stored and self.spec_store is not None:
            self.spec_store.delete(stored["spec_key"])
        if status == "existing" and (existing := self.get(other)) is not None:
            return existing, False
        raise self._refusal(status, other, team, depends_on, max_queued, max_stored, submits_per_minute)

    def _new_record(
        self,
        job_id: str,
        now: float,
        kind: str,
        spec: dict,
        queue: str,
        depends_on: list[str],
        name: str | None,
        team: str,
        priority: int,
        time_limit_s: float | None,
    ) -> dict[str, Any]:
        """A queued job's record, as `get` returns it."""
        return {
            "format": RECORD_FORMAT,
            "id": job_id,
            "kind": kind,
            "state": "queued",
            "spec": spec,
            "queue": queue,
            "depends_on": depends_on,
            "name": name,
            "team": team,
            "created_at": now,
            "priority": priority,
            "time_limit_s": time_limit_s,
            "started_at": None,
            "finished_at": None,
            "attempts": 0,
            "max_attempts": self.max_attempts,
            "dispatch_id": "",
            "dispatched": False,
            "error": None,
            "manifest_key": None,
            "progress": {"fraction": 0.0, "phase": "queued", "message": "", "figures": {}},
            "cancel_requested": False,
            "worker": None,
            "heartbeat_at": None,
        }

    def _store_large_spec(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record as Redis keeps it: a spec over INLINE_SPEC_BYTES goes to the object store,
        and the record keeps its key."""
        spec_json = json.dumps(record["spec"])
        stored = dict(record)
        if self.spec_store is not None and len(spec_json) > INLINE_SPEC_BYTES:
            stored.update(spec=None, spec_key=keys.job_spec(record["id"]), spec_bytes=len(spec_json))
            self.spec_store.put(stored["spec_key"], spec_json.encode(), content_type="application/json")
        return stored

    def _refusal(
        self,
        status: str,
        other: str,
        team: str,
        depends_on: list[str],
        max_queued: int | None,
        max_stored: int | None,
        submits_per_minute: int | None,
    ) -> Exception:
        """Why the create script refused a job (its `status`, and `other`: a job id, a dependency's
        index or seconds to wait), as the exception `create` raises."""
        if status == "conflict":
            return IdempotencyConflict(other)
        if status == "missing":
            return MissingDependency(int(other), depends_on[int(other)])
        if status == "rate":
            return QuotaExceeded(
                f"team {team!r} made {submits_per_minute} submits in the last 60 s (quota "
                f"submits_per_minute={submits_per_minute}); retry in {other} s",
                int(other),
            )
        if status == "stored":
            return QuotaExceeded(
                f"team {team!r} already stores {max_stored} jobs (quota max_stored_jobs={max_stored}); ended "
                f"jobs are kept for {self.job_retention_s():,.0f} s, then expire; an admin can purge them "
                f"sooner (`saeq purge --team {team}`)",
                60,
            )
        if status == "queued":
            return QuotaExceeded(
                f"team {team!r} already has {max_queued} jobs waiting to run "
                f"(quota max_queued={max_queued}); wait for some to finish or cancel some"
            )
        return RuntimeError(f"job {other} of this Idempotency-Key was purged while this request read it; retry")

    def _drop_unrecorded_spec(self, stored: dict, job_id: str) -> None:
        """The create script failed (Redis unreachable past its retries): delete the spec it would
        have pointed to, unless the script ran after all and only its answer was lost."""
        if "spec_key" not in stored:
            return
        try:
            recorded = self.r.exists(redis_keys.job(job_id))
        except redis.RedisError:
            return  # cannot tell: a spec kept unreferenced costs less than a record without its spec
        if not recorded and self.spec_store is not None:
            self.spec_store.delete(stored["spec_key"])

    def ready_to_dispatch(self, job_id: str, job: dict | None = None) -> tuple[bool, str | None]:
        """Mark the job dispatched if all its dependencies succeeded (once, whoever asks first) and
        its team has a free slot (quota max_running); a job without a slot waits in the team's
        `waiting` set. Returns (dispatch_now, dispatch_id). A failed dependency fails the job.
        `job`: the record, when the caller holds it (saves a read)."""
        job = job or self.get(job_id)
        if not job or job["state"] != "queued" or job["dispatched"]:
            return False, None
        if job["depends_on"]:
            deps = [self.get(d) for d in job["depends_on"]]
            bad = [d for d in deps if d is None or d["state"] in ("failed", "cancelled")]
            if bad:
                which = bad[0]["id"] if bad[0] else "?"
                self.finish_unowned(
                    job_id,
                    "failed",
                    error={
                        "code": "upstream_failed",
                        "field": "depends_on",
                        "message": f"job {which} that this job depends on did not succeed",
                    },
                )
                return False, None
            if any(d is None or d["state"] != "succeeded" for d in deps):
                return False, None
        status, dispatch_id = self.try_dispatch(job)
        return (True, dispatch_id) if status == DISPATCHED else (False, None)

    def try_dispatch(
        self, job: dict[str, Any], capacity: int | None = READ_CAPACITY, max_running: int | None = None
    ) -> tuple[int, str]:
        """Mark a queued job whose dependencies succeeded dispatched if its team has a free slot
        and its queue free capacity, else (re)put it in its team's waiting set. Returns (status,
        dispatch_id): DISPATCHED, NO_TEAM_SLOT, NO_CAPACITY or NOT_QUEUED (ended, or sent already).
        `capacity` (pools.capacity) and `max_running` (the team's quota): as the caller read them
        just now, else read here."""
        job_id = job["id"]
        # The slot and capacity checks and the dispatch in one script: concurrent submits of one
        # team would otherwise keep invalidating each other's WATCH on the shared `active` set.
        # Capacity: the live workers' slots on the job's queue (None: nobody advertises it, so
        # dispatch is not gated); the jobs sent there and not ended hold them.
        team = job.get("team") or "default"
        dispatch_id = new_id()
        if capacity == READ_CAPACITY:
            capacity = pools.capacity(self.r, job["queue"])
        status = self._dispatch(
            keys=[
                redis_keys.job(job_id),
                redis_keys.team(team, "active"),
                redis_keys.team(team, "waiting"),
                redis_keys.DISPATCHED,
                redis_keys.queue_dispatched(job["queue"]),
                redis_keys.TEAMS,
                redis_keys.queue_sent(job["queue"]),
            ],
            args=[
                self.teams.quota(team).max_running if max_running is None else max_running,
                dispatch_id,
                waiting_score(job.get("priority") or 0, job["created_at"]),
                job_id,
                time.time(),
                -1 if capacity is None else capacity,
                team,
                job["created_at"],
            ],
        )
        return int(cast(int, status)), dispatch_id

    def received(self, job_id: str) -> None:
        """A worker took the job's message and prepares to claim it: the reaper gives it time."""
        self.r.zadd(redis_keys.DISPATCHED, {job_id: time.time()}, xx=True)

    def dependents(self, job_id: str) -> list[str]:
        return sorted(cast(set[str], self.r.smembers(redis_keys.job_dependents(job_id))))

    def next_waiting(self, team: str) -> str | None:
        """The team's waiting job to start next: highest priority, then oldest."""
        ids = cast(list[str], self.r.zrange(redis_keys.team(team, "waiting"), 0, 0))
        return ids[0] if ids else None

    def teams_waiting(self) -> list[str]:
        return [t for t in self.teams.teams() if self.r.zcard(redis_keys.team(t, "waiting"))]

    def usage(self, team: str) -> dict[str, int]:
        """How many of the team's jobs are dispatched (running or about to), and waiting."""
        pipe = self.r.pipeline(transaction=False)
        pipe.scard(redis_keys.team(team, "open"))
        pipe.scard(redis_keys.team(team, "active"))
        open_, active = pipe.execute()
        return {"active": active, "waiting": max(0, open_ - active)}

    def waiting_count(self, team: str) -> int:
        return self.usage(team)["waiting"]
