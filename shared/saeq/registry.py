"""Job records in Redis: the one source of truth for a job's state, shared by API and workers.

Celery's result backend is not used: a record outlives broker messages and API restarts.
Every state change is a compare-and-set (WATCH/MULTI), so the API, the reaper and a worker never
overwrite each other. States: queued -> running -> succeeded | failed | cancelled.
A worker holds a lease (a key with a TTL it renews); a running job whose lease expired lost its
worker, and the reaper dispatches it again or fails it as `worker_lost` after `max_attempts`.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import redis

TERMINAL = ("succeeded", "failed", "cancelled")
DURATION_BUCKETS_S = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600)
STATES = ("queued", "running") + TERMINAL
_P = "saeq:"
_CENSUS = ("kind", "state", "queue", "team", "created_at", "dispatched")


def new_id() -> str:
    return uuid.uuid4().hex


def _k(job_id: str, suffix: str = "") -> str:
    return f"{_P}job:{job_id}{suffix}"


@dataclass
class Claim:
    """What a worker may do with a delivered message."""

    action: str  # "run" | "skip" | "busy"
    attempt: int = 0
    token: str = ""
    reason: str = ""


class Registry:
    def __init__(self, client: redis.Redis, *, max_attempts: int = 3, lease_ttl_s: float = 15.0):
        self.r = client
        self.max_attempts = max_attempts
        self.lease_ttl_ms = int(lease_ttl_s * 1000)

    @classmethod
    def from_url(cls, url: str, **kw) -> "Registry":
        return cls(redis.Redis.from_url(url, decode_responses=True, health_check_interval=30), **kw)

    # ---- reading -------------------------------------------------------------------------

    def get(self, job_id: str) -> dict[str, Any] | None:
        raw = self.r.hgetall(_k(job_id))
        return _decode(raw) if raw else None

    def list(self, *, kind: str | None = None, state: str | None = None, limit: int = 50,
             before: float | None = None, team: str | None = None) -> list[dict[str, Any]]:
        """Newest first; `before` is the created_at of the last job of the previous page."""
        out: list[dict[str, Any]] = []
        hi = f"({before}" if before is not None else "+inf"
        while len(out) < limit:
            ids = self.r.zrevrangebyscore(f"{_P}jobs", hi, "-inf", start=0, num=200, withscores=True)
            if not ids:
                break
            for job_id, score in ids:
                job = self.get(job_id)
                if job and (kind is None or job["kind"] == kind) and (state is None or job["state"] == state) \
                        and (team is None or job.get("team") == team):
                    out.append(job)
                    if len(out) == limit:
                        break
            hi = f"({ids[-1][1]}"
        return out

    def events(self, job_id: str, *, after: str = "0-0", count: int = 500) -> list[dict[str, Any]]:
        rows = self.r.xrange(_k(job_id, ":events"), min=f"({after}" if after != "0-0" else "-", count=count)
        return [{"id": eid, **json.loads(fields["e"])} for eid, fields in rows]

    # ---- creating and dispatching --------------------------------------------------------

    def create(self, *, kind: str, spec: dict, queue: str, depends_on: list[str], name: str | None = None,
               team: str = "default", idempotency_key: str | None = None) -> tuple[dict[str, Any], bool]:
        """Store a queued job. Returns (job, created); an idempotency key seen before returns the
        job it created the first time."""
        job_id = new_id()
        if idempotency_key:
            idem = f"{_P}idem:{team}:{idempotency_key}"
            if not self.r.set(idem, job_id, nx=True, ex=7 * 24 * 3600):
                existing = self.get(self.r.get(idem) or "")
                if existing:
                    return existing, False
                self.r.set(idem, job_id, ex=7 * 24 * 3600)
        now = time.time()
        record = {
            "id": job_id, "kind": kind, "state": "queued", "spec": spec, "queue": queue,
            "depends_on": depends_on, "name": name, "team": team, "created_at": now,
            "started_at": None, "finished_at": None, "attempts": 0, "max_attempts": self.max_attempts,
            "dispatch_id": "", "dispatched": False, "error": None, "manifest_key": None,
            "progress": {"fraction": 0.0, "phase": "queued", "message": "", "figures": {}},
            "cancel_requested": False, "worker": None, "heartbeat_at": None,
        }
        pipe = self.r.pipeline()
        pipe.hset(_k(job_id), mapping=_encode(record))
        pipe.zadd(f"{_P}jobs", {job_id: now})
        pipe.hincrby(f"{_P}stats:submitted", kind, 1)
        for dep in depends_on:
            pipe.sadd(_k(dep, ":dependents"), job_id)
        pipe.execute()
        self.event(job_id, "queued", f"{kind} job submitted")
        return record, True

    def ready_to_dispatch(self, job_id: str) -> tuple[bool, str | None]:
        """Mark the job dispatched if all its dependencies succeeded (once, whoever asks first).
        Returns (dispatch_now, dispatch_id). A failed dependency fails the job."""
        key = _k(job_id)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    job = _decode(pipe.hgetall(key))
                    if not job or job["state"] != "queued" or job["dispatched"]:
                        pipe.reset()
                        return False, None
                    deps = [self.get(d) for d in job["depends_on"]]
                    bad = [d for d in deps if d is None or d["state"] in ("failed", "cancelled")]
                    if bad:
                        pipe.reset()
                        which = bad[0]["id"] if bad[0] else "?"
                        self.finish_unowned(job_id, "failed", error={
                            "code": "upstream_failed", "field": "depends_on",
                            "message": f"job {which} that this job depends on did not succeed"})
                        return False, None
                    if any(d["state"] != "succeeded" for d in deps):
                        pipe.reset()
                        return False, None
                    dispatch_id = new_id()
                    pipe.multi()
                    pipe.hset(key, mapping=_encode({"dispatched": True, "dispatch_id": dispatch_id}))
                    pipe.execute()
                    return True, dispatch_id
                except redis.WatchError:
                    continue

    def dependents(self, job_id: str) -> list[str]:
        return sorted(self.r.smembers(_k(job_id, ":dependents")))

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
                    pipe.hset(key, mapping=_encode({
                        "state": "running", "attempts": job["attempts"] + 1, "worker": worker,
                        "started_at": job["started_at"] or now, "heartbeat_at": now}))
                    pipe.sadd(f"{_P}running", job_id)
                    pipe.execute()
                    self.event(job_id, "running", f"attempt {job['attempts'] + 1} on {worker}")
                    return Claim("run", attempt=job["attempts"] + 1, token=token)
                except redis.WatchError:
                    continue

    def heartbeat(self, job_id: str, token: str) -> tuple[bool, bool]:
        """Renew the lease. Returns (still_owner, cancel_requested)."""
        renewed = self.r.eval(_RENEW, 1, _k(job_id, ":lease"), token, self.lease_ttl_ms)
        if renewed:
            self.r.hset(_k(job_id), "heartbeat_at", json.dumps(time.time()))
        cancel = self.r.hget(_k(job_id), "cancel_requested") == "true"
        return bool(renewed), cancel

    def report(self, job_id: str, progress: dict[str, Any]) -> None:
        self.r.hset(_k(job_id), "progress", json.dumps(progress))

    def event(self, job_id: str, phase: str, message: str, **figures: Any) -> None:
        entry = {"t": time.time(), "phase": phase, "message": message, "figures": figures}
        self.r.xadd(_k(job_id, ":events"), {"e": json.dumps(entry)}, maxlen=2000, approximate=True)

    def finish(self, job_id: str, token: str, state: str, *, error: dict | None = None,
               manifest_key: str | None = None) -> bool:
        """End a running job that this worker owns. False if it lost the lease meanwhile."""
        key, lease = _k(job_id), _k(job_id, ":lease")
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key, lease)
                    if pipe.get(lease) != token:
                        return False
                    job = _decode(pipe.hgetall(key))
                    pipe.multi()
                    self._end(pipe, job, state, error, manifest_key)
                    pipe.delete(lease)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        self.event(job_id, state, (error or {}).get("message", state))
        return True

    def finish_unowned(self, job_id: str, state: str, *, error: dict | None = None) -> bool:
        """End a job nobody runs (queued, or running with a lost worker)."""
        key = _k(job_id)
        with self.r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    job = _decode(pipe.hgetall(key))
                    if not job or job["state"] in TERMINAL:
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

    def _end(self, pipe, job: dict, state: str, error: dict | None, manifest_key: str | None) -> None:
        progress = dict(job["progress"], phase=state)
        if state == "succeeded":
            progress["fraction"] = 1.0
        pipe.hset(_k(job["id"]), mapping=_encode({
            "state": state, "finished_at": time.time(), "error": error,
            "manifest_key": manifest_key, "progress": progress}))
        pipe.srem(f"{_P}running", job["id"])
        pipe.zadd(f"{_P}finished", {job["id"]: time.time()})
        # Counters live in Redis so every API replica and worker process exports the same totals.
        kind = job["kind"]
        pipe.hincrby(f"{_P}stats:finished", f"{kind}|{state}", 1)
        duration = time.time() - (job["started_at"] or job["created_at"])
        for le in DURATION_BUCKETS_S:
            if duration <= le:
                pipe.hincrby(f"{_P}stats:duration", f"{kind}|{le}", 1)
        pipe.hincrby(f"{_P}stats:duration", f"{kind}|+Inf", 1)
        pipe.hincrbyfloat(f"{_P}stats:duration", f"{kind}|sum", duration)

    # ---- cancel and reap -----------------------------------------------------------------

    def request_cancel(self, job_id: str) -> dict[str, Any] | None:
        """Cancel a queued job at once; ask a running one to stop (its worker polls the flag)."""
        job = self.get(job_id)
        if job is None or job["state"] in TERMINAL:
            return job
        self.r.hset(_k(job_id), "cancel_requested", "true")
        if job["state"] == "queued":
            self.finish_unowned(job_id, "cancelled", error=_cancelled())
        else:
            self.event(job_id, "cancelling", "cancel requested")
        return self.get(job_id)

    def reap(self, grace_s: float = 0.0) -> tuple[list[tuple[dict, str]], list[str]]:
        """Find running jobs whose worker is lost. Returns ((job, dispatch_id) to re-send, ids of
        jobs ended here): jobs out of attempts are failed as `worker_lost`."""
        resend, ended = [], []
        for job_id in self.r.smembers(f"{_P}running"):
            if self.r.exists(_k(job_id, ":lease")):
                continue
            key = _k(job_id)
            with self.r.pipeline() as pipe:
                try:
                    pipe.watch(key, _k(job_id, ":lease"))
                    job = _decode(pipe.hgetall(key))
                    if not job or job["state"] != "running" or pipe.exists(_k(job_id, ":lease")):
                        pipe.reset()
                        if job and job["state"] != "running":
                            self.r.srem(f"{_P}running", job_id)
                        continue
                    if time.time() - (job["heartbeat_at"] or 0) < grace_s:
                        continue
                    if job["cancel_requested"] or job["attempts"] >= job["max_attempts"]:
                        pipe.reset()
                        err = _cancelled() if job["cancel_requested"] else _worker_lost(job)
                        if self.finish_unowned(job_id, "cancelled" if job["cancel_requested"] else "failed",
                                               error=err):
                            ended.append(job_id)
                        continue
                    dispatch_id = new_id()
                    pipe.multi()
                    pipe.hset(key, mapping=_encode({"state": "queued", "dispatch_id": dispatch_id}))
                    pipe.srem(f"{_P}running", job_id)
                    pipe.execute()
                except redis.WatchError:
                    continue
            self.event(job_id, "requeued", f"worker {job['worker']} lost; requeued after attempt "
                                           f"{job['attempts']} of {job['max_attempts']}")
            resend.append((job, dispatch_id))
        return resend, ended

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
        return [{f: json.loads(v) if v is not None else None for f, v in zip(_CENSUS, row)}
                for row in (pipe.execute() if ids else []) if row[0] is not None]


Send = Callable[[dict, str], None]
"""send(job, dispatch_id) puts a message for the job on its queue."""


def dispatch_ready(registry: Registry, job_id: str, send: Send) -> None:
    """Send the job to its queue if its dependencies allow."""
    ok, dispatch_id = registry.ready_to_dispatch(job_id)
    if ok:
        send(registry.get(job_id), dispatch_id)
    elif (job := registry.get(job_id)) and job["state"] == "failed":
        for dep in registry.dependents(job_id):
            dispatch_ready(registry, dep, send)


def after_finish(registry: Registry, job_id: str, send: Send) -> None:
    """A job ended: start (or fail) the jobs that waited for it."""
    for dependent in registry.dependents(job_id):
        dispatch_ready(registry, dependent, send)


def _cancelled() -> dict:
    return {"code": "cancelled", "field": None, "message": "cancelled by request"}


def _worker_lost(job: dict) -> dict:
    return {"code": "worker_lost", "field": None,
            "message": f"the worker running this job was lost on each of {job['attempts']} attempts "
                       f"(last: {job['worker']}); giving up after max_attempts={job['max_attempts']}"}


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
