"""Job records in Redis: the one source of truth for a job's state, shared by API and workers.

Celery's result backend is not used: a record outlives broker messages and API restarts.
Every state change is a compare-and-set (WATCH/MULTI), so the API, the reaper and a worker never
overwrite each other. States: queued -> running -> succeeded | failed | cancelled.
A worker holds a lease (a key with a TTL it renews); a running job whose lease expired lost its
worker, and the reaper dispatches it again or fails it as `worker_lost` after `max_attempts`. The
reaper also sends again a job whose message died with a worker before its claim, and fails as
`time_limit` a job long past its time limit that its worker did not stop.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from saeq import keys
from saeq.platform.teams import Teams
from saeq.retry import retrying

if TYPE_CHECKING:
    from saeq.platform.store import ObjectStore

TERMINAL = ("succeeded", "failed", "cancelled")
DURATION_BUCKETS_S = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600)
STATES = ("queued", "running") + TERMINAL
_P = "saeq:"
_CENSUS = ("kind", "state", "queue", "team", "created_at", "dispatched")
_DISPATCHED = f"{_P}dispatched"
"""Queued jobs with a message on their queue that no worker has claimed yet, scored by when it
was sent: the reaper sends again those whose message was lost."""


REDIS_RETRY_S = 25.0
"""How long a registry call rides out an unreachable Redis (a restart, a failover) before it
raises: long enough for a restart replaying its AOF, short enough that a request still answers."""


class RetryFor(Retry):
    """redis-py's Retry bounded by time instead of by count: saeq's retry policy (saeq.retry;
    backoff 50 ms doubling to 1 s) on connection errors and timeouts until `seconds` have passed.
    A WATCH broken by a reconnect raises WatchError, so every compare-and-set simply runs again."""

    def __init__(self, seconds: float = REDIS_RETRY_S):
        super().__init__(ExponentialBackoff(cap=1.0, base=0.025), retries=1 << 20)
        self.seconds = seconds

    def call_with_retry(self, do, fail, is_retryable=None, with_failure_count=False):
        def transient(error: BaseException) -> bool:
            return isinstance(error, self._supported_errors) and (is_retryable is None or is_retryable(error))

        def failed(error: BaseException, failures: int) -> None:
            fail(error, failures) if with_failure_count else fail(error)  # redis-py drops the connection

        return retrying(
            "Redis call",
            deadline_s=self.seconds,
            is_transient=transient,
            first_delay_s=0.05,
            max_delay_s=1.0,
            on_failure=failed,
        )(do)


def new_id() -> str:
    return uuid.uuid4().hex


def _k(job_id: str, suffix: str = "") -> str:
    return f"{_P}job:{job_id}{suffix}"


def _team(team: str, what: str) -> str:
    """Per-team keys: `jobs` (every job, by creation time), `open` (not ended), `active`
    (dispatched, not ended), `waiting` (ready but held for a slot; highest priority, then oldest,
    first)."""
    return f"{_P}team:{team}:{what}"


def _upload_order(created_at: float, upload_id: str) -> str:
    """An upload's member in its team's `upload_order` (all scores 0): sorted by name, oldest
    first, ties by id, so a page resumes exactly after the previous page's last member."""
    return f"{created_at:017.6f}/{upload_id}"


def _waiting_score(priority: int, created_at: float) -> float:
    return (9 - priority) * 1e10 + created_at


INLINE_SPEC_BYTES = 16 << 10
"""A spec larger than this (as JSON) lives in the object store (keys.job_spec), not in the job's
Redis record: a record then costs Redis a few KB whatever its spec holds (the body limit is 1 MiB)."""
DEFAULT_RETENTION_S = 7 * 24 * 3600.0
IDEMPOTENCY_TTL_S = 7 * 24 * 3600
SUMMARY_FIELDS = (
    "id",
    "kind",
    "state",
    "name",
    "team",
    "queue",
    "depends_on",
    "created_at",
    "started_at",
    "finished_at",
    "attempts",
    "max_attempts",
    "cancel_requested",
    "progress",
    "error",
    "manifest_key",
    "worker",
    "priority",
    "time_limit_s",
    "dispatched",
)
"""What listings read of a record: everything but the spec."""
_LAST_EVENT_ID = f"{(1 << 64) - 1}-{(1 << 64) - 1}"
_RETENTION = f"{_P}settings:job_retention_s"
_EXPIRING = f"{_P}expiring"
"""Ended jobs as `team/job_id`, scored by when their record expires (sweep_expired)."""
_SPECS_IN_STORE = f"{_P}specs_in_store"
"""Ids of jobs whose spec lives in the object store, to delete it with the record."""


class QuotaExceeded(Exception):
    """The team has as many waiting or stored jobs, or made as many submits this minute, as its
    quota allows."""

    def __init__(self, message: str, retry_after_s: int = 30):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class IdempotencyConflict(Exception):
    """An Idempotency-Key seen before, sent with a different request; `job_id` is the job the
    first request created."""

    def __init__(self, job_id: str):
        super().__init__(job_id)
        self.job_id = job_id


class MissingDependency(Exception):
    """A job listed in depends_on (at `index`) has no record any more: it expired or was purged."""

    def __init__(self, index: int, job_id: str):
        super().__init__(f"no job {job_id!r}")
        self.index, self.job_id = index, job_id


@dataclass
class Claim:
    """What a worker may do with a delivered message."""

    action: str  # "run" | "skip" | "busy"
    attempt: int = 0
    token: str = ""
    reason: str = ""


class Registry:
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
        self._dispatch = client.register_script(_DISPATCH)
        self._create = client.register_script(_CREATE)

    @classmethod
    def from_url(cls, url: str, *, retry_s: float = REDIS_RETRY_S, **kw) -> Registry:
        """A registry whose calls retry for `retry_s` while Redis is unreachable."""
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            health_check_interval=30,
            retry=RetryFor(retry_s),
            socket_connect_timeout=5,
            socket_keepalive=True,
        )
        return cls(client, **kw)

    # ---- reading -------------------------------------------------------------------------

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The whole record, spec included (read from the store when it lives there)."""
        raw = self.r.hgetall(_k(job_id))
        return self._with_spec(_decode(raw)) if "id" in raw else None  # not a field a late write left

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
        team: str | None = None,
        summary: bool = False,
    ) -> list[dict[str, Any]]:
        """Newest first; `before` is the created_at of the last job of the previous page. A team's
        jobs come from its own index, so one team's listing never reads the others'. `summary`:
        SUMMARY_FIELDS only, never the spec, so a page costs a few KB a job whatever specs hold."""
        out: list[dict[str, Any]] = []
        hi = f"({before}" if before is not None else "+inf"
        index = _team(team, "jobs") if team is not None else f"{_P}jobs"
        batch = limit if kind is None and state is None else 200
        while len(out) < limit:
            ids = self.r.zrevrangebyscore(index, hi, "-inf", start=0, num=batch, withscores=True)
            if not ids:
                break
            pipe = self.r.pipeline(transaction=False)
            for job_id, _ in ids:
                pipe.hmget(_k(job_id), *SUMMARY_FIELDS) if summary else pipe.hgetall(_k(job_id))
            for raw in pipe.execute():
                if summary:
                    raw = {f: v for f, v in zip(SUMMARY_FIELDS, raw) if v is not None}
                job = _decode(raw) if "id" in raw else None  # expired since the index was read
                if job and not summary:
                    job = self._with_spec(job)
                if job and (kind is None or job["kind"] == kind) and (state is None or job["state"] == state):
                    out.append(job)
                    if len(out) == limit:
                        break
            hi = f"({ids[-1][1]}"
        return out

    def events(self, job_id: str, *, after: str = "0-0", count: int = 500) -> list[dict[str, Any]]:
        if after == _LAST_EVENT_ID:
            return []  # nothing can follow it (and Redis refuses an exclusive range from it)
        rows = self.r.xrange(_k(job_id, ":events"), min=f"({after}" if after != "0-0" else "-", count=count)
        return [{"id": eid, **json.loads(fields["e"])} for eid, fields in rows]

    # ---- creating and dispatching --------------------------------------------------------

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
        record = {
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
        spec_json = json.dumps(spec)
        stored = dict(record)
        if self.spec_store is not None and len(spec_json) > INLINE_SPEC_BYTES:
            stored.update(spec=None, spec_key=keys.job_spec(job_id), spec_bytes=len(spec_json))
            self.spec_store.put(stored["spec_key"], spec_json.encode(), content_type="application/json")
        deps = [k for dep in depends_on for k in (_k(dep, ":dependents"), _k(dep))]
        no_limit = -1
        try:
            status, other = self._create(
                keys=[
                    _k(job_id),
                    _k(job_id, ":events"),
                    f"{_P}jobs",
                    _team(team, "jobs"),
                    _team(team, "open"),
                    _team(team, "active"),
                    _team(team, "ended"),
                    _team(team, "submits"),
                    f"{_P}idem:{team}:{idempotency_key or ''}",
                    f"{_P}stats:submitted",
                    _SPECS_IN_STORE,
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
                    json.dumps(_event_entry("queued", f"{kind} job submitted", {})),
                    _k(""),
                    int("spec_key" in stored),
                    *(x for kv in _encode(stored).items() for x in kv),
                ],
            )
        except redis.RedisError:
            self._drop_unrecorded_spec(stored, job_id)
            raise
        if status == "created":
            return record, True
        if "spec_key" in stored:
            self.spec_store.delete(stored["spec_key"])
        if status == "existing" and (existing := self.get(other)) is not None:
            return existing, False
        if status == "conflict":
            raise IdempotencyConflict(other)
        if status == "missing":
            raise MissingDependency(int(other), depends_on[int(other)])
        if status == "rate":
            raise QuotaExceeded(
                f"team {team!r} made {submits_per_minute} submits in the last 60 s (quota "
                f"submits_per_minute={submits_per_minute}); retry in {other} s",
                int(other),
            )
        if status == "stored":
            raise QuotaExceeded(
                f"team {team!r} already stores {max_stored} jobs (quota max_stored_jobs={max_stored}); ended "
                f"jobs are kept for {self.job_retention_s():,.0f} s, then expire; an admin can purge them "
                f"sooner (`saeq purge --team {team}`)",
                60,
            )
        if status == "queued":
            raise QuotaExceeded(
                f"team {team!r} already has {max_queued} jobs waiting to run "
                f"(quota max_queued={max_queued}); wait for some to finish or cancel some"
            )
        raise RuntimeError(f"job {other} of this Idempotency-Key was purged while this request read it; retry")

    def _drop_unrecorded_spec(self, stored: dict, job_id: str) -> None:
        """The create script failed (Redis unreachable past its retries): delete the spec it would
        have pointed to, unless the script ran after all and only its answer was lost."""
        if "spec_key" not in stored:
            return
        try:
            recorded = self.r.exists(_k(job_id))
        except redis.RedisError:
            return  # cannot tell: a spec kept unreferenced costs less than a record without its spec
        if not recorded:
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
            if any(d["state"] != "succeeded" for d in deps):
                return False, None
        # The slot check and the dispatch in one script: concurrent submits of one team would
        # otherwise keep invalidating each other's WATCH on the shared `active` set.
        team = job.get("team") or "default"
        dispatch_id = new_id()
        sent = self._dispatch(
            keys=[_k(job_id), _team(team, "active"), _team(team, "waiting"), _DISPATCHED],
            args=[
                self.teams.quota(team).max_running,
                dispatch_id,
                _waiting_score(job.get("priority") or 0, job["created_at"]),
                job_id,
                time.time(),
            ],
        )
        return (True, dispatch_id) if sent == 1 else (False, None)

    def received(self, job_id: str) -> None:
        """A worker took the job's message and prepares to claim it: the reaper gives it time."""
        self.r.zadd(_DISPATCHED, {job_id: time.time()}, xx=True)

    def dependents(self, job_id: str) -> list[str]:
        return sorted(self.r.smembers(_k(job_id, ":dependents")))

    def next_waiting(self, team: str) -> str | None:
        """The team's waiting job to start next: highest priority, then oldest."""
        ids = self.r.zrange(_team(team, "waiting"), 0, 0)
        return ids[0] if ids else None

    def teams_waiting(self) -> list[str]:
        return [t for t in self.teams.teams() if self.r.zcard(_team(t, "waiting"))]

    def usage(self, team: str) -> dict[str, int]:
        """How many of the team's jobs are dispatched (running or about to), and waiting."""
        pipe = self.r.pipeline(transaction=False)
        pipe.scard(_team(team, "open"))
        pipe.scard(_team(team, "active"))
        open_, active = pipe.execute()
        return {"active": active, "waiting": max(0, open_ - active)}

    def waiting_count(self, team: str) -> int:
        return self.usage(team)["waiting"]

    # ---- worker side ---------------------------------------------------------------------

    def claim(self, job_id: str, dispatch_id: str, worker: str) -> Claim:
        key, lease = _k(job_id), _k(job_id, ":lease")
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key, lease)
                    job = _decode(pipe.hgetall(key))
                    if not job:
                        return Claim("skip", reason="no such job")
                    if job["state"] in TERMINAL:
                        return Claim("skip", reason=f"job already {job['state']}")
                    if job["dispatch_id"] != dispatch_id:
                        return Claim("skip", reason="superseded dispatch")
                    if pipe.exists(lease):
                        return Claim("busy", reason="another worker holds the lease")
                    if job["cancel_requested"]:
                        pipe.reset()
                        self.finish_unowned(job_id, "cancelled", error=_cancelled())
                        return Claim("skip", reason="cancelled")
                    if job["attempts"] >= job["max_attempts"]:
                        pipe.reset()
                        self.finish_unowned(job_id, "failed", error=_worker_lost(job))
                        return Claim("skip", reason="attempts exhausted")
                    token = new_id()
                    now = time.time()
                    pipe.multi()
                    pipe.set(lease, token, px=self.lease_ttl_ms)
                    pipe.hset(
                        key,
                        mapping=_encode(
                            {
                                "state": "running",
                                "attempts": job["attempts"] + 1,
                                "worker": worker,
                                "started_at": job["started_at"] or now,
                                "heartbeat_at": now,
                            }
                        ),
                    )
                    pipe.sadd(f"{_P}running", job_id)
                    pipe.zrem(_DISPATCHED, job_id)
                    pipe.execute()
                    self.event(job_id, "running", f"attempt {job['attempts'] + 1} on {worker}")
                    return Claim("run", attempt=job["attempts"] + 1, token=token)
                except redis.WatchError:
                    continue

    def heartbeat(self, job_id: str, token: str) -> tuple[bool, bool]:
        """Renew the lease. Returns (still_owner, stop): stop when a cancel was requested, or
        the job was ended under its worker (the reaper, past its time limit)."""
        renewed = self.r.eval(_RENEW, 1, _k(job_id, ":lease"), token, self.lease_ttl_ms)
        if renewed:
            self._hset_existing(job_id, "heartbeat_at", json.dumps(time.time()))
        cancel, state = self.r.hmget(_k(job_id), "cancel_requested", "state")
        return bool(renewed), cancel == "true" or state is None or json.loads(state) in TERMINAL  # None: gone

    def report(self, job_id: str, progress: dict[str, Any]) -> None:
        self._hset_existing(job_id, "progress", json.dumps(progress))

    def _hset_existing(self, job_id: str, field: str, value: str) -> None:
        """Write a field of a record that exists: a record purged or expired under its worker is
        not brought back as a partial hash that never expires."""
        self.r.eval(_HSET_EXISTING, 1, _k(job_id), field, value)

    def event(self, job_id: str, phase: str, message: str, **figures: Any) -> None:
        """Log an event of a job whose record exists (else its log would outlive it, without TTL)."""
        entry = _event_entry(phase, message, figures)
        self.r.eval(_XADD_EXISTING, 2, _k(job_id), _k(job_id, ":events"), json.dumps(entry))

    def finish(
        self, job_id: str, token: str, state: str, *, error: dict | None = None, manifest_key: str | None = None
    ) -> bool:
        """End a running job that this worker owns. False if it lost the lease meanwhile. A job
        the reaper ended under this worker keeps its end; only its slot is freed now."""
        key, lease = _k(job_id), _k(job_id, ":lease")
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key, lease)
                    if pipe.get(lease) != token:
                        return False
                    job = _decode(pipe.hgetall(key))
                    if not job:  # purged or expired meanwhile: nothing left to record
                        return False
                    ended_before = job["state"] in TERMINAL
                    pipe.multi()
                    if ended_before:
                        self._release(pipe, job)
                        self._expire_later(pipe, job.get("team") or "default", job_id)
                    else:
                        self._end(pipe, job, state, error, manifest_key)
                    pipe.delete(lease)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        if ended_before:
            self.event(
                job_id, "released", f"the worker let go of the job ({job['state']} before it stopped); its slot is free"
            )
        else:
            self.event(job_id, state, (error or {}).get("message", state))
        return True

    def finish_unowned(
        self, job_id: str, state: str, *, error: dict | None = None, states: tuple[str, ...] = ("queued", "running")
    ) -> bool:
        """End a job nobody runs (queued, or running with a lost worker), if it is in one of
        `states`. False if it was not."""
        key = _k(job_id)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    job = _decode(pipe.hgetall(key))
                    if not job or job["state"] not in states:
                        pipe.reset()
                        return False
                    pipe.multi()
                    self._end(pipe, job, state, error, None)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        self.event(job_id, state, (error or {}).get("message", state))
        return True

    def _end(
        self, pipe, job: dict, state: str, error: dict | None, manifest_key: str | None, *, release: bool = True
    ) -> None:
        """Record the end. `release` False: a worker still computes the job, so it keeps its
        team's slot (and its place in `running`) until `_release`: the worker lets go, or its
        lease expires (the reaper)."""
        progress = dict(job["progress"], phase=state)
        if state == "succeeded":
            progress["fraction"] = 1.0
        pipe.hset(
            _k(job["id"]),
            mapping=_encode(
                {
                    "state": state,
                    "finished_at": time.time(),
                    "error": error,
                    "manifest_key": manifest_key,
                    "progress": progress,
                }
            ),
        )
        pipe.zrem(_DISPATCHED, job["id"])
        team = job.get("team") or "default"
        if release:
            self._release(pipe, job)
        pipe.zrem(_team(team, "waiting"), job["id"])
        pipe.zadd(f"{_P}finished", {job["id"]: time.time()})
        if release:  # else at release: a record expiring under its worker would leak its slot
            self._expire_later(pipe, team, job["id"])
        # Counters live in Redis so every API replica and worker process exports the same totals.
        kind = job["kind"]
        pipe.hincrby(f"{_P}stats:finished", f"{kind}|{state}", 1)
        duration = time.time() - (job["started_at"] or job["created_at"])
        for le in DURATION_BUCKETS_S:
            if duration <= le:
                pipe.hincrby(f"{_P}stats:duration", f"{kind}|{le}", 1)
        pipe.hincrby(f"{_P}stats:duration", f"{kind}|+Inf", 1)
        pipe.hincrbyfloat(f"{_P}stats:duration", f"{kind}|sum", duration)

    def _release_lost(self, job: dict) -> None:
        with self.r.pipeline() as pipe:
            self._release(pipe, job)
            self._expire_later(pipe, job.get("team") or "default", job["id"])
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
        pipe.srem(f"{_P}running", job["id"])
        pipe.srem(_team(team, "open"), job["id"])
        pipe.srem(_team(team, "active"), job["id"])

    # ---- cancel and reap -----------------------------------------------------------------

    def request_cancel(self, job_id: str) -> dict[str, Any] | None:
        """Cancel a queued job at once (waiting on its dependencies, or sent and not yet claimed:
        its message is skipped); ask a running one to stop (its worker polls the flag, and the
        reaper ends it if the worker is gone). An ended job is left as it is."""
        job = self.get(job_id)
        if job is None or job["state"] in TERMINAL:
            return job
        # The flag first: a claim from now on sees it (claim WATCHes the record) and runs nothing,
        # so a job claimed meanwhile is never ended under its running worker.
        self.r.hset(_k(job_id), "cancel_requested", "true")
        if not self.finish_unowned(job_id, "cancelled", error=_cancelled(), states=("queued",)):
            if (self.get(job_id) or {}).get("state") == "running":
                self.event(job_id, "cancelling", "cancel requested")
        return self.get(job_id)

    def reap(
        self,
        grace_s: float = 0.0,
        *,
        time_limit_grace_s: float = 15.0,
        lost_after_s: float | None = None,
        waiting: Callable[[], set[str]] | None = None,
    ) -> tuple[list[tuple[dict, str]], list[str]]:
        """Find running jobs whose worker is lost, jobs long past their time limit, and sent jobs
        whose message was lost. Returns ((job, dispatch_id) to re-send, ids of jobs ended here).

        A job out of attempts fails as `worker_lost`. One that ran more than `time_limit_grace_s`
        past its `time_limit_s` fails as `time_limit`, running or queued again, even while its
        (hung) worker still renews the lease; it keeps its team's slot until that worker lets go
        or its lease expires, so `max_running` counts every job a worker computes; its record
        expires only after that. A running job whose record is gone frees its slot. With
        `lost_after_s` and `waiting` (the dispatch ids of the messages waiting on the broker's
        queues), a job sent that long ago that no worker claimed and whose message is not waiting
        is sent again: its message died with a worker that had taken it, or was never sent; and a
        job created that long ago, ready but never sent, is sent.
        """
        resend, ended = [], self._end_overdue(time_limit_grace_s)
        for job_id in self.r.smembers(f"{_P}running"):
            if self.r.exists(_k(job_id, ":lease")):
                continue
            key = _k(job_id)
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(key, _k(job_id, ":lease"))
                    job = _decode(pipe.hgetall(key))
                    if "id" not in job:  # gone, or a partial hash a late write left: forget it
                        pipe.reset()
                        self._forget_slot(job_id)
                        continue
                    if job["state"] != "running" or pipe.exists(_k(job_id, ":lease")):
                        pipe.reset()
                        if job["state"] in TERMINAL and not self.r.exists(_k(job_id, ":lease")):
                            # Ended under a worker that never let go: its lease expired, so it is
                            # lost, and the slot it kept is free now.
                            self._release_lost(job)
                            ended.append(job_id)
                        elif job["state"] != "running":
                            self.r.srem(f"{_P}running", job_id)
                        continue
                    if time.time() - (job["heartbeat_at"] or 0) < grace_s:
                        continue
                    if job["cancel_requested"] or job["attempts"] >= job["max_attempts"]:
                        pipe.reset()
                        err = _cancelled() if job["cancel_requested"] else _worker_lost(job)
                        if self.finish_unowned(job_id, "cancelled" if job["cancel_requested"] else "failed", error=err):
                            ended.append(job_id)
                        continue
                    dispatch_id = new_id()
                    pipe.multi()
                    pipe.hset(key, mapping=_encode({"state": "queued", "dispatch_id": dispatch_id}))
                    pipe.srem(f"{_P}running", job_id)
                    pipe.zadd(_DISPATCHED, {job_id: time.time()})
                    pipe.execute()
                except redis.WatchError:
                    continue
            self.event(
                job_id,
                "requeued",
                f"worker {job['worker']} lost; requeued after attempt {job['attempts']} of {job['max_attempts']}",
            )
            resend.append((job, dispatch_id))
        if lost_after_s is not None and waiting is not None:
            resend += self._redispatch_lost(lost_after_s, waiting)
            resend += self._dispatch_stranded(lost_after_s)
        return resend, ended

    def _dispatch_stranded(self, older_than_s: float) -> list[tuple[dict, str]]:
        """Queued jobs never sent, though ready, created more than `older_than_s` ago: the process
        that created one died (or lost Redis) before sending it, and its client never retried."""
        out = []
        for team in self.teams.teams():
            pipe = self.r.pipeline(transaction=False)
            pipe.sdiff(_team(team, "open"), _team(team, "active"))
            pipe.zrange(_team(team, "waiting"), 0, -1)
            unsent, waiting = pipe.execute()
            for job_id in set(unsent) - set(waiting):  # at most the team's max_queued
                raw = self.r.hmget(_k(job_id), *SUMMARY_FIELDS)  # not the spec: read again each pass
                job = {f: json.loads(v) for f, v in zip(SUMMARY_FIELDS, raw) if v is not None}
                if (
                    "id" not in job
                    or job["state"] != "queued"
                    or job["dispatched"]
                    or time.time() - job["created_at"] < older_than_s
                ):
                    continue
                ok, dispatch_id = self.ready_to_dispatch(job_id, job)  # waits on its dependencies
                if ok:
                    self.event(job_id, "redispatched", "the job was created but never sent; sent now")
                    out.append((job, dispatch_id))
        return out

    def _forget_slot(self, job_id: str) -> None:
        """A running job without a record (older saeq let a held one expire): free whichever
        team's slot it holds."""
        pipe = self.r.pipeline(transaction=False)
        pipe.srem(f"{_P}running", job_id)
        for team in self.teams.teams():
            pipe.srem(_team(team, "open"), job_id)
            pipe.srem(_team(team, "active"), job_id)
        pipe.execute()

    def _end_overdue(self, grace_s: float) -> list[str]:
        """Fail, as `time_limit`, running and requeued jobs more than `grace_s` past their limit."""
        ended = []
        candidates = self.r.smembers(f"{_P}running") | set(self.r.zrange(_DISPATCHED, 0, -1))
        for job_id in candidates:
            limit, started = (
                json.loads(v) if v else None for v in self.r.hmget(_k(job_id), "time_limit_s", "started_at")
            )
            if not limit or not started or time.time() - started <= limit + grace_s:
                continue
            key, lease = _k(job_id), _k(job_id, ":lease")
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(key, lease)
                    job = _decode(pipe.hgetall(key))
                    if "id" not in job or job["state"] in TERMINAL:
                        continue
                    error = _time_limit(job["time_limit_s"], time.time() - job["started_at"])
                    error["message"] += "; its worker did not stop it, so it was ended without it"
                    # A worker that still holds the lease still computes: it keeps the team's slot
                    # until it lets go (its next heartbeat tells it to stop) or its lease expires.
                    held = job["state"] == "running" and pipe.exists(lease)
                    pipe.multi()
                    self._end(pipe, job, "failed", error, None, release=not held)
                    if not held:
                        pipe.delete(lease)
                    pipe.execute()
                except redis.WatchError:
                    continue
            self.event(job_id, "failed", error["message"])
            ended.append(job_id)
        return ended

    def _redispatch_lost(self, older_than_s: float, waiting: Callable[[], set[str]]) -> list[tuple[dict, str]]:
        due = self.r.zrangebyscore(_DISPATCHED, "-inf", time.time() - older_than_s)
        if not due:
            return []
        on_queue = waiting()
        resend = []
        for job_id in due:
            key = _k(job_id)
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    job = _decode(pipe.hgetall(key))
                    if not job or job["state"] != "queued" or not job["dispatched"]:
                        pipe.reset()
                        self.r.zrem(_DISPATCHED, job_id)
                        continue
                    if job["dispatch_id"] in on_queue:
                        continue  # waiting its turn
                    # A new dispatch id: should the old message turn up after all, it is skipped.
                    dispatch_id = new_id()
                    pipe.multi()
                    pipe.hset(key, "dispatch_id", json.dumps(dispatch_id))
                    pipe.zadd(_DISPATCHED, {job_id: time.time()})
                    pipe.execute()
                except redis.WatchError:
                    continue
            self.event(
                job_id,
                "redispatched",
                f"no worker took the job within {older_than_s:.0f} s and its message is not on its queue; sent again",
            )
            resend.append((job, dispatch_id))
        return resend

    # ---- retention and purge -------------------------------------------------------------

    def set_job_retention(self, seconds: float) -> None:
        """The deployment's retention of ended jobs (settings.job_retention_s), written by the API at
        start so that the workers, which end most jobs, use the same."""
        self.r.set(_RETENTION, json.dumps(seconds))
        self._retention = (time.monotonic(), seconds)

    def job_retention_s(self) -> float:
        """How long an ended record stays (read at most every 5 s)."""
        read_at, seconds = self._retention
        if time.monotonic() - read_at > 5.0:
            raw = self.r.get(_RETENTION)
            seconds = json.loads(raw) if raw else DEFAULT_RETENTION_S
            self._retention = (time.monotonic(), seconds)
        return seconds

    def _expire_later(self, pipe, team: str, job_id: str) -> None:
        """An ended record, its events and its dependents set expire after the retention; the
        indexes drop the id then (sweep_expired), and a team's count of stored jobs at once."""
        ttl_s = self.job_retention_s()
        for key in (_k(job_id), _k(job_id, ":events"), _k(job_id, ":dependents")):
            pipe.pexpire(key, max(1, int(ttl_s * 1000)))
        expires = time.time() + ttl_s
        pipe.zadd(_team(team, "ended"), {job_id: expires})
        pipe.zadd(_EXPIRING, {f"{team}/{job_id}": expires})

    def stored_jobs(self, team: str) -> int:
        """The team's records in Redis (what quota max_stored_jobs counts)."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zcard(_team(team, "jobs"))
        pipe.zcount(_team(team, "ended"), "-inf", time.time())
        total, expired = pipe.execute()
        return total - expired

    def sweep_expired(self, limit: int = 1000) -> int:
        """Drop from the indexes up to `limit` jobs whose records expired, and delete their specs
        kept in the store. The reaper calls it; the counts are right without it."""
        due = self.r.zrangebyscore(_EXPIRING, "-inf", time.time(), start=0, num=limit)
        self._forget([tuple(m.split("/", 1)) for m in due])
        return len(due)

    def purge(self, *, team: str | None = None, ended_before: float | None = None) -> list[str]:
        """Delete now the ended jobs (of one team, or all) that ended before `ended_before`
        (default: now): records, events, index entries and specs in the store. Their artifacts
        stay. Returns their ids."""
        cutoff = time.time() if ended_before is None else ended_before
        if team is not None:
            candidates = [(team, job_id) for job_id in self.r.zrange(_team(team, "ended"), 0, -1)]
        else:
            candidates = [tuple(m.split("/", 1)) for m in self.r.zrange(_EXPIRING, 0, -1)]
        purged = []
        # Ended under a worker that still computes it: its team's slot is freed when the worker
        # lets go, which needs the record; purged on a later call.
        held = self.r.smembers(f"{_P}running")
        candidates = [(t, job_id) for t, job_id in candidates if job_id not in held]
        for i in range(0, len(candidates), 500):
            chunk = candidates[i : i + 500]
            pipe = self.r.pipeline(transaction=False)
            for _, job_id in chunk:
                pipe.hget(_k(job_id), "finished_at")
            for (t, job_id), finished in zip(chunk, pipe.execute()):
                if finished is None or json.loads(finished) < cutoff:  # None: expired already
                    purged.append((t, job_id))
        self._forget(purged, delete=True)
        return [job_id for _, job_id in purged]

    def _forget(self, jobs: list[tuple[str, str]], *, delete: bool = False) -> None:
        """Remove ended jobs (team, id) from every index, and their specs from the store; `delete`:
        their records too (else they expired)."""
        if not jobs:
            return
        pipe = self.r.pipeline(transaction=False)
        for team, job_id in jobs:
            if delete:
                pipe.delete(_k(job_id), _k(job_id, ":events"), _k(job_id, ":dependents"))
            pipe.zrem(f"{_P}jobs", job_id)
            pipe.zrem(_team(team, "jobs"), job_id)
            pipe.zrem(_team(team, "ended"), job_id)
            pipe.zrem(_EXPIRING, f"{team}/{job_id}")
            pipe.zrem(f"{_P}finished", job_id)
            pipe.srem(_SPECS_IN_STORE, job_id)
        had_spec = pipe.execute()[5 + int(delete) :: 6 + int(delete)]  # the srem of each job
        for (_, job_id), in_store in zip(jobs, had_spec):
            if in_store and self.spec_store is not None:
                self.spec_store.delete(keys.job_spec(job_id))

    def recently_ended(self, slack_s: float = 2 * REDIS_RETRY_S + 10) -> list[str]:
        """Jobs ended since the previous call (by any API replica), and in the `slack_s` before it.
        The reaper starts their dependents again, in case the process that ended them died first
        (starting them twice is harmless)."""
        now = time.time()
        last = self.r.getset(f"{_P}reaper:ended_seen", json.dumps(now))
        since = (json.loads(last) if last else now) - slack_s
        return self.r.zrangebyscore(f"{_P}finished", since, "+inf")

    def reserve_upload(
        self,
        upload_id: str,
        team: str,
        size: int,
        record: dict[str, Any],
        *,
        max_bytes: int,
        max_uploads: int,
        per_minute: int,
    ) -> tuple[str, int]:
        """Count an upload against its team's quota and record it, `storing` (owner, and `record`:
        key, documents, created_at), in one step. Returns (status, figure): ("ok", bytes now
        counted), ("bytes", bytes counted already), ("count", uploads kept) or ("rate", seconds to
        wait; `per_minute` reserves in any 60 s). Called before the bytes are stored, so a crash in
        between leaves a record the team can delete, never stored bytes that nobody counts."""
        status, figure = self.r.register_script(_RESERVE_UPLOAD)(
            keys=[*self._upload_keys(team, upload_id), _team(team, "upload_times")],
            args=[
                upload_id,
                size,
                max_bytes,
                self._upload_json(record, size, "storing"),
                team,
                _upload_order(record["created_at"], upload_id),
                max_uploads,
                per_minute,
                time.time(),
            ],
        )
        return str(status), int(figure)

    def commit_upload(self, upload_id: str, team: str, size: int, record: dict[str, Any]) -> bool:
        """Mark a reserved upload `stored` once its bytes are; False when it was deleted meanwhile
        (the caller then deletes the bytes it stored)."""
        return bool(
            self.r.register_script(_COMMIT_UPLOAD)(
                keys=[_team(team, "uploads")],
                args=[upload_id, self._upload_json(record, size, "storing"), self._upload_json(record, size, "stored")],
            )
        )

    def release_upload(self, upload_id: str, team: str) -> int:
        """Forget an upload (its bytes stop counting); the bytes freed."""
        return int(self.r.register_script(_RELEASE_UPLOAD)(keys=self._upload_keys(team, upload_id), args=[upload_id]))

    def uploads(
        self, team: str, *, limit: int, after: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None, int, int]:
        """A page of the team's uploads, oldest first, after the cursor `after`: (rows, the next
        page's cursor or None, bytes counted, uploads kept)."""
        order = _team(team, "upload_order")
        if self.r.zcard(order) < self.r.hlen(_team(team, "uploads")):  # records older than the order
            self.r.zadd(
                order,
                {
                    _upload_order(json.loads(v).get("created_at") or 0, k): 0
                    for k, v in self.r.hgetall(_team(team, "uploads")).items()
                },
                nx=True,
            )
        members = self.r.zrange(order, f"({after}" if after else "-", "+", bylex=True, offset=0, num=limit + 1)
        ids = [m.rsplit("/", 1)[1] for m in members[:limit]]
        pipe = self.r.pipeline(transaction=False)
        pipe.get(_team(team, "upload_bytes"))
        pipe.hlen(_team(team, "uploads"))
        for upload_id in ids:
            pipe.hget(_team(team, "uploads"), upload_id)
        used, n, *records = pipe.execute()
        # "stored": records older than the states were all stored
        rows = [{"upload_id": i, "state": "stored", **json.loads(v)} for i, v in zip(ids, records) if v]
        return rows, (members[limit - 1] if len(members) > limit else None), int(used or 0), int(n)

    def upload_record(self, upload_id: str, team: str) -> dict[str, Any] | None:
        raw = self.r.hget(_team(team, "uploads"), upload_id)
        return {"upload_id": upload_id, "state": "stored", **json.loads(raw)} if raw else None

    def upload_owner(self, upload_id: str) -> str | None:
        return self.r.get(f"{_P}upload:{upload_id}")

    @staticmethod
    def _upload_keys(team: str, upload_id: str) -> list[str]:
        return [
            _team(team, "upload_bytes"),
            _team(team, "uploads"),
            f"{_P}upload:{upload_id}",
            _team(team, "upload_order"),
        ]

    @staticmethod
    def _upload_json(record: dict[str, Any], size: int, state: str) -> str:
        return json.dumps({**record, "size": size, "state": state}, sort_keys=True)

    def try_lock(self, name: str, ttl_s: float) -> bool:
        return bool(self.r.set(f"{_P}lock:{name}", "1", nx=True, px=int(ttl_s * 1000)))

    def stats(self) -> dict[str, dict[str, str]]:
        """Raw counters for the metrics endpoint."""
        return {name: self.r.hgetall(f"{_P}stats:{name}") for name in ("submitted", "finished", "duration")}

    def counts(self) -> Iterator[tuple[str, str, int]]:
        """(kind, state, n) over all stored jobs, for gauges."""
        tally: dict[tuple[str, str], int] = {}
        for job in self.census():
            key = (job["kind"], job["state"])
            tally[key] = tally.get(key, 0) + 1
        for (kind, state), n in sorted(tally.items()):
            yield kind, state, n

    def census(self) -> list[dict[str, Any]]:
        """The fields gauges need (kind, state, queue, team, created_at, dispatched) of every
        stored job, read in one round trip."""
        ids = self.r.zrange(f"{_P}jobs", 0, -1)
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(_k(job_id), *_CENSUS)
        return [
            {f: json.loads(v) if v is not None else None for f, v in zip(_CENSUS, row)}
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
    if ok:
        send(job, dispatch_id)  # reads only id, kind and queue, which never change
        return dispatch_id
    if job and job["depends_on"] and (now := registry.get(job_id)) and now["state"] == "failed":
        after_finish(registry, job_id, send)  # failed here for a failed dependency: tell its dependents
    return None


def start_waiting(registry: Registry, team: str, send: Send) -> None:
    """Fill the team's free slots with its waiting jobs, best first."""
    while (job_id := registry.next_waiting(team)) is not None:
        if not dispatch_ready(registry, job_id, send):
            job = registry.get(job_id)
            if job is None or job["state"] != "queued" or job["dispatched"]:
                registry.r.zrem(_team(team, "waiting"), job_id)  # ended or sent meanwhile
            else:
                return  # no slot: it went back to waiting


def after_finish(registry: Registry, job_id: str, send: Send) -> None:
    """A job ended: start (or fail) the jobs that waited for it, and give its slot to the next of
    its team's waiting jobs."""
    for dependent in registry.dependents(job_id):
        dispatch_ready(registry, dependent, send)
    if (job := registry.get(job_id)) is not None:
        start_waiting(registry, job.get("team") or "default", send)


def _cancelled() -> dict:
    return {"code": "cancelled", "field": None, "message": "cancelled by request"}


def _time_limit(limit_s: float, elapsed_s: float) -> dict:
    return {"code": "time_limit", "field": None, "message": time_limit_message(limit_s, elapsed_s)}


def time_limit_message(limit_s: float, elapsed_s: float) -> str:
    return f"the job ran for {elapsed_s:,.1f} s since it first started, past its time limit of {limit_s:,g} s"


def _worker_lost(job: dict) -> dict:
    return {
        "code": "worker_lost",
        "field": None,
        "message": f"the worker running this job was lost on each of {job['attempts']} attempts "
        f"(last: {job['worker']}); giving up after max_attempts={job['max_attempts']}",
    }


def _event_entry(phase: str, message: str, figures: dict[str, Any]) -> dict[str, Any]:
    return {"t": time.time(), "phase": phase, "message": message, "figures": figures}


# KEYS: job, team's active set, team's waiting set, dispatched-not-claimed set.
# ARGV: max_running, dispatch_id, waiting score, job id, now. Fields are JSON-encoded (_encode).
# Returns 1: dispatched; 0: no slot, waiting; -1: not queued, or already dispatched.
_DISPATCH = """
local state = redis.call('hget', KEYS[1], 'state')
if state ~= '"queued"' or redis.call('hget', KEYS[1], 'dispatched') == 'true' then
  redis.call('zrem', KEYS[3], ARGV[4])
  return -1
end
if redis.call('scard', KEYS[2]) >= tonumber(ARGV[1]) then
  redis.call('zadd', KEYS[3], ARGV[3], ARGV[4])
  return 0
end
redis.call('hset', KEYS[1], 'dispatched', 'true', 'dispatch_id', '"' .. ARGV[2] .. '"')
redis.call('sadd', KEYS[2], ARGV[4])
redis.call('zrem', KEYS[3], ARGV[4])
redis.call('zadd', KEYS[4], ARGV[5], ARGV[4])
return 1
"""

# KEYS: 1 team's upload bytes, 2 its records, 3 the upload's owner, 4 the team's uploads in order,
#   5 its recent reserves. ARGV: 1 id, 2 size, 3 max bytes, 4 record, 5 team, 6 order member,
#   7 max uploads, 8 per minute, 9 now.
_RESERVE_UPLOAD = """
local now = tonumber(ARGV[9])
redis.call('zremrangebyscore', KEYS[5], '-inf', now - 60)
if redis.call('zcard', KEYS[5]) >= tonumber(ARGV[8]) then
  local oldest = redis.call('zrange', KEYS[5], 0, 0, 'WITHSCORES')
  local wait = 60
  if oldest[2] then wait = tonumber(oldest[2]) + 60 - now end
  return {'rate', math.max(1, math.ceil(wait))}
end
local kept = redis.call('hlen', KEYS[2])
if kept >= tonumber(ARGV[7]) then
  return {'count', kept}
end
local used = tonumber(redis.call('get', KEYS[1]) or '0')
if used + tonumber(ARGV[2]) > tonumber(ARGV[3]) then
  return {'bytes', used}
end
redis.call('incrby', KEYS[1], ARGV[2])
redis.call('hset', KEYS[2], ARGV[1], ARGV[4])
redis.call('set', KEYS[3], ARGV[5])
redis.call('zadd', KEYS[4], 0, ARGV[6])
redis.call('zadd', KEYS[5], now, ARGV[1])
redis.call('expire', KEYS[5], 61)
return {'ok', used + tonumber(ARGV[2])}
"""

_COMMIT_UPLOAD = """
if redis.call('hget', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('hset', KEYS[1], ARGV[1], ARGV[3])
return 1
"""

_RELEASE_UPLOAD = """
local record = redis.call('hget', KEYS[2], ARGV[1])
local size = 0
if record then
  size = cjson.decode(record)['size']
  redis.call('hdel', KEYS[2], ARGV[1])
  redis.call('decrby', KEYS[1], string.format('%d', size))
  local created = string.format('%017.6f', cjson.decode(record)['created_at'] or 0)
  redis.call('zrem', KEYS[4], created .. '/' .. ARGV[1])
end
redis.call('del', KEYS[3])
return size
"""

# KEYS: 1 record, 2 its events, 3 all jobs, 4 team's jobs, 5 team's open, 6 team's active,
#   7 team's ended, 8 team's recent submits, 9 idempotency key, 10 submit counters, 11 specs in the
#   store, then per dependency: its dependents set, its record.
# ARGV: 1 job id, 2 now, 3 max_queued, 4 max_stored, 5 submits_per_minute (-1: no limit), 6 request
#   digest, 7 idempotency TTL (0: no key), 8 kind, 9 first event, 10 record key prefix, 11 spec in
#   the store (1/0), 12... the record's field, value pairs.
# Returns {status, id or seconds}: created, existing, conflict, rate (retry after), queued, stored,
#   missing (index of a dependency whose record is gone).
_CREATE = """
if redis.call('exists', KEYS[1]) == 1 then
  return {'created', ARGV[1]}  -- a new id: this call ran already, and its answer was lost (retried)
end
local now = tonumber(ARGV[2])
if ARGV[7] ~= '0' then
  local seen = redis.call('get', KEYS[9])
  if seen then
    local id, digest = string.match(seen, '^(%x+) ?(%x*)$')
    -- The earlier job's record key is built here: saeq's Redis is never a cluster.
    if id and redis.call('exists', ARGV[10] .. id) == 1 then
      if digest == '' or digest == ARGV[6] then return {'existing', id} end
      return {'conflict', id}
    end
  end
end
local per_minute = tonumber(ARGV[5])
if per_minute >= 0 then
  redis.call('zremrangebyscore', KEYS[8], '-inf', now - 60)
  if redis.call('zcard', KEYS[8]) >= per_minute then
    local oldest = redis.call('zrange', KEYS[8], 0, 0, 'WITHSCORES')
    local wait = 60
    if oldest[2] then wait = tonumber(oldest[2]) + 60 - now end
    return {'rate', tostring(math.max(1, math.ceil(wait)))}
  end
end
local max_queued = tonumber(ARGV[3])
if max_queued >= 0 and redis.call('scard', KEYS[5]) - redis.call('scard', KEYS[6]) >= max_queued then
  return {'queued', ''}
end
local max_stored = tonumber(ARGV[4])
if max_stored >= 0 and redis.call('zcard', KEYS[4]) - redis.call('zcount', KEYS[7], '-inf', ARGV[2]) >= max_stored then
  return {'stored', ''}
end
for i = 12, #KEYS, 2 do
  -- Expired or purged since the caller checked it: its dependents set would never expire.
  if redis.call('exists', KEYS[i + 1]) == 0 then return {'missing', tostring((i - 12) / 2)} end
end
redis.call('hset', KEYS[1], unpack(ARGV, 12))
redis.call('zadd', KEYS[3], ARGV[2], ARGV[1])
redis.call('zadd', KEYS[4], ARGV[2], ARGV[1])
redis.call('sadd', KEYS[5], ARGV[1])
redis.call('hincrby', KEYS[10], ARGV[8], 1)
redis.call('xadd', KEYS[2], 'MAXLEN', '~', '2000', '*', 'e', ARGV[9])
if ARGV[11] == '1' then redis.call('sadd', KEYS[11], ARGV[1]) end
if per_minute >= 0 then
  redis.call('zadd', KEYS[8], ARGV[2], ARGV[1])
  redis.call('expire', KEYS[8], 61)
end
if ARGV[7] ~= '0' then redis.call('set', KEYS[9], ARGV[1] .. ' ' .. ARGV[6], 'EX', ARGV[7]) end
for i = 12, #KEYS, 2 do
  redis.call('sadd', KEYS[i], ARGV[1])
  -- A dependency that ended already expires: so does the set of its dependents.
  local ttl = redis.call('pttl', KEYS[i + 1])
  if ttl > 0 then redis.call('pexpire', KEYS[i], ttl) end
end
return {'created', ARGV[1]}
"""

_HSET_EXISTING = """
if redis.call('exists', KEYS[1]) == 1 then return redis.call('hset', KEYS[1], ARGV[1], ARGV[2]) end
return 0
"""

# KEYS: the record, its events. ARGV: the entry (JSON).
_XADD_EXISTING = """
if redis.call('exists', KEYS[1]) == 0 then return false end
return redis.call('xadd', KEYS[2], 'MAXLEN', '~', '2000', '*', 'e', ARGV[1])
"""

_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
"""


def _encode(d: dict[str, Any]) -> dict[str, str]:
    return {k: json.dumps(v) for k, v in d.items()}


def _decode(d: dict[str, str]) -> dict[str, Any]:
    return {k: json.loads(v) for k, v in d.items()}
