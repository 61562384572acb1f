"""A job record in Redis: reading it, its events, ending it, and how long it stays once ended.

The base every part of the registry builds on (saeq.platform.registry composes them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, cast

import redis
from redis.client import Pipeline

from saeq.platform import job_counts, lua_scripts, redis_keys
from saeq.platform.job_model import (
    DEFAULT_RETENTION_S,
    DURATION_BUCKETS_S,
    LAST_EVENT_ID,
    SUMMARY_FIELDS,
    cancelled_error,
    decode,
    encode,
    event_entry,
)
from saeq.platform.teams import Teams
from saeq.specs.records import JobRecord
from saeq.specs.states import TERMINAL

if TYPE_CHECKING:
    from saeq.platform.store import ObjectStore

T = TypeVar("T")


def checked(job: dict[str, Any]) -> dict[str, Any]:
    """A decoded record, once saeq.specs.records.JobRecord accepts it (JobRecordError naming the
    field otherwise): callers keep the dict itself, so what the API returns stays as stored."""
    JobRecord.read(job)
    return job


class JobCore:
    """The registry's Redis client, teams and spec store, and what every part of it does to a record."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        max_attempts: int = 3,
        lease_ttl_s: float = 15.0,
        spec_store: ObjectStore | None = None,
    ):
        """`spec_store`: where specs over INLINE_SPEC_BYTES go (the API's and workers' store);
        without it every spec stays in its record."""
        self.r = client
        self.max_attempts = max_attempts
        self.lease_ttl_ms = int(lease_ttl_s * 1000)
        self.teams = Teams(client)
        self.spec_store = spec_store
        self._retention = (float("-inf"), DEFAULT_RETENTION_S)
        self._dispatch = client.register_script(lua_scripts.DISPATCH)
        self._create = client.register_script(lua_scripts.CREATE)

    def _transaction(self, attempt: Callable[[Pipeline], T], *watches: str) -> T:
        """A compare-and-set through redis-py's transaction helper: `attempt(pipe)` reads with
        `watches` watched, then queues its writes after `pipe.multi()`; it runs again whenever a
        watched key changed before EXEC. Returns what it returned. An attempt that queued no
        write (it found nothing to do) sends no MULTI/EXEC: its pipe is reset, unwatching."""

        def once(pipe: Pipeline) -> T:
            value = attempt(pipe)
            if not pipe.explicit_transaction:
                pipe.reset()
            return value

        # redis-py types `func` as returning None; with value_from_callable its value is returned.
        return cast(T, self.r.transaction(once, *watches, value_from_callable=True))  # pyright: ignore[reportArgumentType]

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The whole record, spec included (read from the store when it lives there)."""
        raw = self.r.hgetall(redis_keys.job(job_id))
        return self._with_spec(checked(decode(raw))) if "id" in raw else None  # not a field a late write left

    def _with_spec(self, job: dict[str, Any]) -> dict[str, Any] | None:
        if not job.get("spec_key"):
            return job
        from saeq.platform.store import MissingObject

        if self.spec_store is None:
            raise RuntimeError(f"job {job['id']}'s spec is in the object store, and this registry has no spec_store")
        try:
            return {**job, "spec": json.loads(self.spec_store.get(job["spec_key"]))}
        except MissingObject:
            return None  # purged meanwhile

    def list(
        self,
        *,
        kind: str | None = None,
        state: str | None = None,
        limit: int = 50,
        before: float | None = None,
        before_id: str | None = None,
        team: str | None = None,
        summary: bool = False,
    ) -> list[dict[str, Any]]:
        """Newest first; `before` (and `before_id`) are the created_at (and id) of the last job of
        the previous page: with the id, the jobs sharing that created_at which follow it are not
        skipped. A team's jobs come from its own index, so one team's listing never reads the
        others'. `summary`: SUMMARY_FIELDS only, never the spec, so a page costs a few KB a job."""
        out: list[dict[str, Any]] = []
        index = redis_keys.team(team, "jobs") if team is not None else redis_keys.ALL_JOBS
        batch = limit if kind is None and state is None else 200
        cursor = (before, before_id)
        while len(out) < limit:
            ids = self._index_after(index, cursor, batch)
            if not ids:
                break
            pipe = self.r.pipeline(transaction=False)
            for job_id, _ in ids:
                pipe.hmget(redis_keys.job(job_id), *SUMMARY_FIELDS) if summary else pipe.hgetall(redis_keys.job(job_id))
            for raw in pipe.execute():
                if summary:
                    raw = {f: v for f, v in zip(SUMMARY_FIELDS, raw, strict=False) if v is not None}
                job = checked(decode(raw)) if "id" in raw else None  # expired since the index was read
                if job and not summary:
                    job = self._with_spec(job)
                if job and (kind is None or job["kind"] == kind) and (state is None or job["state"] == state):
                    out.append(job)
                    if len(out) == limit:
                        break
            cursor = (ids[-1][1], ids[-1][0])
        return out

    def _index_after(self, index: str, cursor: tuple[float | None, str | None], batch: int) -> list[tuple[str, float]]:
        """Up to `batch` (id, created_at) of the index after the cursor, newest first. Ties are in
        reverse id order (Redis's order within a score), so those after (score, id) are the ids
        below it at that score, then everything older."""
        score, job_id = cursor
        tied: list[tuple[str, float]] = []
        if score is not None and job_id is not None:
            same = cast(list[str], self.r.zrangebyscore(index, score, score))
            tied = [(m, score) for m in reversed(same) if m < job_id][:batch]
        if len(tied) == batch:
            return tied
        hi = f"({score!r}" if score is not None else "+inf"
        older = cast(
            list[tuple[str, float]],
            self.r.zrevrangebyscore(index, hi, "-inf", start=0, num=batch - len(tied), withscores=True),
        )
        return tied + older

    def events(self, job_id: str, *, after: str = "0-0", count: int = 500) -> list[dict[str, Any]]:
        if after == LAST_EVENT_ID:
            return []  # nothing can follow it (and Redis refuses an exclusive range from it)
        rows = cast(
            list[tuple[str, dict[str, str]]],
            self.r.xrange(redis_keys.job_events(job_id), min=f"({after}" if after != "0-0" else "-", count=count),
        )
        return [{"id": eid, **json.loads(fields["e"])} for eid, fields in rows]

    def event(self, job_id: str, phase: str, message: str, **figures: Any) -> None:
        """Log an event of a job whose record exists (else its log would outlive it, without TTL)."""
        entry = event_entry(phase, message, figures)
        self.r.eval(
            lua_scripts.XADD_EXISTING, 2, redis_keys.job(job_id), redis_keys.job_events(job_id), json.dumps(entry)
        )

    def _hset_existing(self, job_id: str, field: str, value: str) -> None:
        """Write a field of a record that exists: a record purged or expired under its worker is
        not brought back as a partial hash that never expires."""
        self.r.eval(lua_scripts.HSET_EXISTING, 1, redis_keys.job(job_id), field, value)

    def request_cancel(self, job_id: str) -> dict[str, Any] | None:
        """Cancel a queued job at once (waiting on its dependencies, or sent and not yet claimed:
        its message is skipped); ask a running one to stop (its worker polls the flag, and the
        reaper ends it if the worker is gone). An ended job is left as it is."""
        job = self.get(job_id)
        if job is None or job["state"] in TERMINAL:
            return job
        # The flag first: a claim from now on sees it (claim WATCHes the record) and runs nothing,
        # so a job claimed meanwhile is never ended under its running worker.
        self.r.hset(redis_keys.job(job_id), "cancel_requested", "true")
        cancelled_now = self.finish_unowned(job_id, "cancelled", error=cancelled_error(), states=("queued",))
        if not cancelled_now and (self.get(job_id) or {}).get("state") == "running":
            self.event(job_id, "cancelling", "cancel requested")
        return self.get(job_id)

    def finish_unowned(
        self, job_id: str, state: str, *, error: dict | None = None, states: tuple[str, ...] = ("queued", "running")
    ) -> bool:
        """End a job nobody runs (queued, or running with a lost worker), if it is in one of
        `states`. False if it was not."""
        key = redis_keys.job(job_id)

        def attempt(pipe: Pipeline) -> bool:
            job = decode(pipe.hgetall(key))
            if not job or job["state"] not in states:
                return False
            pipe.multi()
            self._end(pipe, job, state, error, None)
            return True

        if not self._transaction(attempt, key):
            return False
        self.event(job_id, state, (error or {}).get("message", state))
        return True

    def _end(
        self, pipe, job: dict, state: str, error: dict | None, manifest_key: str | None, *, release: bool = True
    ) -> None:
        """Record the end. `release` False: a worker still computes the job, so it keeps its
        team's slot (and its place in `running`) until `_release`: the worker lets go, or its
        lease expires (the reaper)."""
        progress: dict[str, Any] = dict(job["progress"], phase=state)
        if state == "succeeded":
            progress["fraction"] = 1.0
        pipe.hset(
            redis_keys.job(job["id"]),
            mapping=encode(
                {
                    "state": state,
                    "finished_at": time.time(),
                    "error": error,
                    "manifest_key": manifest_key,
                    "progress": progress,
                }
            ),
        )
        pipe.zrem(redis_keys.DISPATCHED, job["id"])
        job_counts.move(pipe, job, state)
        team = job.get("team") or "default"
        if release:
            self._release(pipe, job)
        pipe.zrem(redis_keys.team(team, "waiting"), job["id"])
        pipe.zadd(redis_keys.FINISHED, {job["id"]: time.time()})
        if release:  # else at release: a record expiring under its worker would leak its slot
            self._expire_later(pipe, job, state)
        # Counters live in Redis so every API replica and worker process exports the same totals.
        kind = job["kind"]
        pipe.hincrby(redis_keys.stats("finished"), f"{kind}|{state}", 1)
        duration = time.time() - (job["started_at"] or job["created_at"])
        for le in DURATION_BUCKETS_S:
            if duration <= le:
                pipe.hincrby(redis_keys.stats("duration"), f"{kind}|{le}", 1)
        pipe.hincrby(redis_keys.stats("duration"), f"{kind}|+Inf", 1)
        pipe.hincrbyfloat(redis_keys.stats("duration"), f"{kind}|sum", duration)

    def _release_lost(self, job: dict) -> None:
        with self.r.pipeline() as pipe:
            self._release(pipe, job)
            self._expire_later(pipe, job, job["state"])
            pipe.execute()
        self.event(
            job["id"],
            "released",
            f"worker {job['worker']} lost (its lease expired) before it let go of the job; its slot is free",
        )

    @staticmethod
    def _release(pipe, job: dict) -> None:
        """Free the team's slot of an ended job: no worker computes it any more."""
        team = job.get("team") or "default"
        pipe.srem(redis_keys.RUNNING, job["id"])
        pipe.srem(redis_keys.team(team, "open"), job["id"])
        pipe.srem(redis_keys.team(team, "active"), job["id"])
        if job.get("queue"):
            pipe.srem(redis_keys.queue_dispatched(job["queue"]), job["id"])  # its capacity is free

    def set_job_retention(self, seconds: float) -> None:
        """The deployment's retention of ended jobs (settings.job_retention_s), written by the API at
        start so that the workers, which end most jobs, use the same."""
        self.r.set(redis_keys.JOB_RETENTION, json.dumps(seconds))
        self._retention = (time.monotonic(), seconds)

    def job_retention_s(self) -> float:
        """How long an ended record stays (read at most every 5 s)."""
        read_at, seconds = self._retention
        if time.monotonic() - read_at > 5.0:
            raw = self.r.get(redis_keys.JOB_RETENTION)
            seconds = json.loads(raw) if raw else DEFAULT_RETENTION_S
            self._retention = (time.monotonic(), seconds)
        return seconds

    def _expire_later(self, pipe, job: dict, state: str) -> None:
        """An ended record (`job` as read, ended as `state`), its events and its dependents set
        expire after the retention; the indexes drop the id then (sweep_expired), and a team's count
        of stored jobs and the job counts (job_counts.settle) at once."""
        team, job_id = job.get("team") or "default", job["id"]
        ttl_s = self.job_retention_s()
        for key in (redis_keys.job(job_id), redis_keys.job_events(job_id), redis_keys.job_dependents(job_id)):
            pipe.pexpire(key, max(1, int(ttl_s * 1000)))
        expires = time.time() + ttl_s
        pipe.zadd(redis_keys.team(team, "ended"), {job_id: expires})
        pipe.zadd(redis_keys.EXPIRING, {f"{team}/{job_id}": expires})
        pipe.zadd(redis_keys.COUNT_EXPIRING, {job_counts.expiring_member(job, state): expires})

    def stored_jobs(self, team: str) -> int:
        """The team's records in Redis (what quota max_stored_jobs counts)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zcard(redis_keys.team(team, "jobs"))
        pipe.zcount(redis_keys.team(team, "ended"), "-inf", time.time())
        total, expired = pipe.execute()
        return total - expired
