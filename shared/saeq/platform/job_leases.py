"""The worker side of a job: claiming a delivered message, holding the lease with heartbeats,
reporting progress, and finishing the job it owns.
"""

from __future__ import annotations

import json
import time
from typing import Any

from redis.client import Pipeline

from saeq.platform import job_counts, lua_scripts, redis_keys
from saeq.platform.job_core import JobCore
from saeq.platform.job_model import (
    Claim,
    cancelled_error,
    decode,
    encode,
    new_id,
    worker_lost_error,
)
from saeq.specs.states import TERMINAL


class Leasing(JobCore):
    """Claims, leases and heartbeats."""

    def claim(self, job_id: str, dispatch_id: str, worker: str) -> Claim:
        """Take the job for `worker` if its message (`dispatch_id`) is the job's current one, no
        other worker holds its lease, and it may still run: a lease and state running, in one
        compare-and-set. A cancelled job, or one out of attempts, is ended here instead."""
        key, lease = redis_keys.job(job_id), redis_keys.job_lease(job_id)

        def attempt(pipe: Pipeline) -> Claim:
            job = decode(pipe.hgetall(key))
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
                self.finish_unowned(job_id, "cancelled", error=cancelled_error())
                return Claim("skip", reason="cancelled")
            if job["attempts"] >= job["max_attempts"]:
                pipe.reset()
                self.finish_unowned(job_id, "failed", error=worker_lost_error(job))
                return Claim("skip", reason="attempts exhausted")
            token = new_id()
            now = time.time()
            pipe.multi()
            pipe.set(lease, token, px=self.lease_ttl_ms)
            pipe.hset(
                key,
                mapping=encode(
                    {
                        "state": "running",
                        "attempts": job["attempts"] + 1,
                        "worker": worker,
                        "started_at": job["started_at"] or now,
                        "last_started_at": now,  # this attempt's start (minimum run time before a preemption)
                        "heartbeat_at": now,
                    }
                ),
            )
            pipe.sadd(redis_keys.RUNNING, job_id)
            pipe.zrem(redis_keys.DISPATCHED, job_id)
            job_counts.move(pipe, job, "running")
            return Claim("run", attempt=job["attempts"] + 1, token=token)

        claim = self._transaction(attempt, key, lease)
        if claim.action == "run":
            self.event(job_id, "running", f"attempt {claim.attempt} on {worker}")
        return claim

    def heartbeat(self, job_id: str, token: str) -> tuple[bool, bool]:
        """Renew the lease. Returns (still_owner, stop): stop when a cancel was requested, or
        the job was ended under its worker (the reaper, past its time limit)."""
        renewed = self.r.eval(lua_scripts.RENEW, 1, redis_keys.job_lease(job_id), token, self.lease_ttl_ms)
        if renewed:
            self._hset_existing(job_id, "heartbeat_at", json.dumps(time.time()))
        cancel, state = self.r.hmget(redis_keys.job(job_id), "cancel_requested", "state")
        return bool(renewed), cancel == "true" or state is None or json.loads(state) in TERMINAL  # None: gone

    def report(self, job_id: str, progress: dict[str, Any]) -> None:
        self._hset_existing(job_id, "progress", json.dumps(progress))

    def finish(
        self, job_id: str, token: str, state: str, *, error: dict | None = None, manifest_key: str | None = None
    ) -> bool:
        """End a running job that this worker owns. False if it lost the lease meanwhile. A job
        the reaper ended under this worker keeps its end; only its slot is freed now."""
        key, lease = redis_keys.job(job_id), redis_keys.job_lease(job_id)

        def attempt(pipe: Pipeline) -> dict[str, Any] | None:
            if pipe.get(lease) != token:
                return None
            job = decode(pipe.hgetall(key))
            if not job:  # purged or expired meanwhile: nothing left to record
                return None
            pipe.multi()
            if job["state"] in TERMINAL:
                self._release(pipe, job)
                self._expire_later(pipe, job, job["state"])
            else:
                self._end(pipe, job, state, error, manifest_key)
            pipe.delete(lease)
            return job

        job = self._transaction(attempt, key, lease)
        if job is None:
            return False
        if job["state"] in TERMINAL:  # as read before the end: the reaper ended it under this worker
            self.event(
                job_id, "released", f"the worker let go of the job ({job['state']} before it stopped); its slot is free"
            )
        else:
            self.event(job_id, state, (error or {}).get("message", state))
        return True
