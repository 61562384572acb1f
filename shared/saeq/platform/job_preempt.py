"""Preemption: asking a dispatched job to yield its worker, and the worker queueing it again once
it saved its state, so that it later resumes where it stopped.

A request sets the record's `preempt` field (the reason) and logs a `preempting` event, in one
script with its checks (lua_scripts.REQUEST_PREEMPT_FUNCTION); the worker running the job reads it
with its heartbeat, stops at its next safe point (training: after the current step, with a
checkpoint at that step; harvest: after the current complete shard), and calls
`requeue_preempted`. The requeue is one compare-and-set: the lease dropped, the job `queued`
again in its team's waiting set at its own priority and age, its team's slot released, the
attempt given back (a preemption is never a failure, so `max_attempts` and the reaper never count
it), `preemptions` + 1 and a `preempted` event. A cancel wins over a preemption. The time limit
counts wall time since the job first started, waiting after a preemption included: preemption
never gives a job more time, and a job past its limit when it yields ends as `time_limit`.
"""

from __future__ import annotations

import json
import time
from typing import Any, cast

from redis.client import Pipeline

from saeq.platform import job_counts, lua_scripts, redis_keys
from saeq.platform.job_core import JobCore
from saeq.platform.job_model import cancelled_error, decode, encode, event_entry, time_limit_error, waiting_score
from saeq.specs.states import TERMINAL

PREEMPT_FIELD = "preempt"
"""Record field: the reason a preemption was asked for (JSON string), null once requeued."""


def preempt_request_args(requests: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """The KEYS and ARGV of lua_scripts.REQUEST_PREEMPT_FUNCTION's `request_preempt` for each (job id, reason): its record and
    events, its reason and `preempting` event as stored (JSON)."""
    keys, args = [], []
    for job_id, reason in requests:
        keys += [redis_keys.job(job_id), redis_keys.job_events(job_id)]
        entry = event_entry("preempting", f"asked to yield: {reason}", {"reason": reason})
        args += [json.dumps(reason), json.dumps(entry)]
    return keys, args


class Preempting(JobCore):
    """Preemption requests and the requeue of a preempted job."""

    def request_preempt(self, job_id: str, reason: str) -> bool:
        """Ask a dispatched (sent, or running) job to yield its worker. True if the request is set:
        False when the job is not dispatched, ended, or being cancelled (a cancel wins)."""
        return self.request_preempts([(job_id, reason)]) == [job_id]

    def request_preempts(self, requests: list[tuple[str, str]]) -> list[str]:
        """`request_preempt` for each (job id, reason), in one script (one round trip, each job's
        checks, `preempt` field and `preempting` event atomic). Returns the ids asked."""
        if not requests:
            return []
        keys, args = preempt_request_args(requests)
        asked = cast(list[int], self.r.eval(lua_scripts.REQUEST_PREEMPTS, len(keys), *keys, *args))
        return [job_id for (job_id, _), ok in zip(requests, asked, strict=True) if ok]

    def preempt_requested(self, job_id: str) -> str | None:
        """The reason the job was asked to yield, or None."""
        raw = cast(str | None, self.r.hget(redis_keys.job(job_id), PREEMPT_FIELD))
        return json.loads(raw) if raw else None

    def requeue_preempted(self, job_id: str, token: str, reason: str, **figures: Any) -> str | None:
        """The worker holding lease `token` saved the job's state and lets go: queue it again.
        Returns the state the job is left in: "queued"; "cancelled" (a cancel came first);
        "failed" (past its time limit); the job's own end state if the reaper ended it under the
        worker (its slot is freed now); None if the worker lost the lease (nothing changed).
        `figures` (tokens, step, shards done) go into the `preempted` event."""
        key, lease = redis_keys.job(job_id), redis_keys.job_lease(job_id)

        def attempt(pipe: Pipeline) -> tuple[str, dict[str, Any]] | None:
            if pipe.get(lease) != token:
                return None
            job = decode(pipe.hgetall(key))
            if "id" not in job:
                return None
            team = job.get("team") or "default"
            pipe.multi()
            pipe.delete(lease)
            if job["state"] in TERMINAL:  # ended under this worker (the reaper): only the slot is left
                self._release(pipe, job)
                self._expire_later(pipe, job, job["state"])
                return "ended", job
            if job["cancel_requested"]:
                self._end(pipe, job, "cancelled", cancelled_error(), None)
                return "cancelled", job
            limit, started = job.get("time_limit_s"), job.get("started_at")
            if limit and started and time.time() - started > limit:
                self._end(pipe, job, "failed", time_limit_error(limit, time.time() - started), None)
                return "failed", job
            self._requeue(pipe, job, team)
            return "queued", job

        outcome = self._transaction(attempt, key, lease)
        if outcome is None:
            return None
        state, job = outcome
        self._requeue_event(job, state, reason, figures)
        return job["state"] if state == "ended" else state

    def _requeue(self, pipe: Pipeline, job: dict[str, Any], team: str) -> None:
        """Back to the team's waiting set, as if it had never been sent: its priority and age keep
        its place, the attempt the claim counted is given back, its slot is free."""
        job_id = job["id"]
        progress = dict(job["progress"], phase="preempted")
        pipe.hset(
            redis_keys.job(job_id),
            mapping=encode(
                {
                    "state": "queued",
                    "dispatched": False,
                    "dispatch_id": "",
                    "attempts": max(0, job["attempts"] - 1),
                    "progress": progress,
                    PREEMPT_FIELD: None,
                    "preemptions": int(job.get("preemptions") or 0) + 1,
                }
            ),
        )
        pipe.srem(redis_keys.RUNNING, job_id)
        pipe.zrem(redis_keys.DISPATCHED, job_id)
        job_counts.move(pipe, job, "queued")  # not sent: it waits for a slot, not a worker
        pipe.srem(redis_keys.team(team, "active"), job_id)
        pipe.srem(redis_keys.queue_dispatched(job["queue"]), job_id)  # its queue's capacity too
        pipe.zadd(
            redis_keys.team(team, "waiting"), {job_id: waiting_score(job.get("priority") or 0, job["created_at"])}
        )

    def _requeue_event(self, job: dict[str, Any], state: str, reason: str, figures: dict[str, Any]) -> None:
        job_id = job["id"]
        if state == "queued":
            self.event(job_id, "preempted", f"yielded its worker ({reason}); queued again", reason=reason, **figures)
        elif state == "cancelled":
            self.event(job_id, "cancelled", cancelled_error()["message"])
        elif state == "failed":
            started = job["started_at"]
            self.event(job_id, "failed", time_limit_error(job["time_limit_s"], time.time() - started)["message"])
        else:
            self.event(job_id, "released", f"the worker let go of the job ({job['state']} before it yielded)")

    def running_on(self, workers: set[str]) -> list[str]:
        """The running jobs whose worker (host:pid of the process computing it) is one of `workers`."""
        ids = sorted(cast(set[str], self.r.smembers(redis_keys.RUNNING)))
        pipe = self.r.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(redis_keys.job(job_id), "worker")
        return [
            job_id
            for job_id, raw in zip(ids, pipe.execute() if ids else [], strict=True)
            if raw and json.loads(raw) in workers
        ]
