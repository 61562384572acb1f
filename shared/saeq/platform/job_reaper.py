"""The reaper's view of the registry: running jobs whose worker was lost, jobs long past their
time limit, and sent jobs whose message was lost.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import cast

from redis.client import Pipeline

from saeq.platform import job_counts, redis_keys
from saeq.platform.job_model import (
    SUMMARY_FIELDS,
    cancelled_error,
    decode,
    encode,
    new_id,
    time_limit_error,
    worker_lost_error,
)
from saeq.platform.job_submit import Submitting
from saeq.platform.redis_client import REDIS_RETRY_S
from saeq.specs.states import TERMINAL


class Reaping(Submitting):
    """Requeue, fail or send again what lost its worker or its message."""

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
        for job_id in cast(set[str], self.r.smembers(redis_keys.RUNNING)):
            if self.r.exists(redis_keys.job_lease(job_id)):
                continue
            outcome = self._reap_lost(job_id, grace_s)
            if outcome == "ended":
                ended.append(job_id)
            elif isinstance(outcome, tuple):
                resend.append(outcome)
        if lost_after_s is not None and waiting is not None:
            resend += self._redispatch_lost(lost_after_s, waiting)
            resend += self._dispatch_stranded(lost_after_s)
        return resend, ended

    def _reap_lost(self, job_id: str, grace_s: float) -> tuple[dict, str] | str | None:
        """A running job without a lease: requeued (returns (job, dispatch_id) to send), ended
        here ("ended": cancelled, out of attempts, or ended under a worker that never let go), or
        left (None: it got a lease meanwhile, its heartbeat is recent, or it is gone)."""
        key, lease = redis_keys.job(job_id), redis_keys.job_lease(job_id)

        def attempt(pipe: Pipeline) -> tuple[dict, str] | str | None:
            job = decode(pipe.hgetall(key))
            if "id" not in job:  # gone, or a partial hash a late write left: forget it
                pipe.reset()
                self._forget_slot(job_id)
                return None
            if job["state"] != "running" or pipe.exists(lease):
                pipe.reset()
                if job["state"] in TERMINAL and not self.r.exists(lease):
                    # Ended under a worker that never let go: its lease expired, so it is
                    # lost, and the slot it kept is free now.
                    self._release_lost(job)
                    return "ended"
                if job["state"] != "running":
                    self.r.srem(redis_keys.RUNNING, job_id)
                return None
            if time.time() - (job["heartbeat_at"] or 0) < grace_s:
                return None
            if job["cancel_requested"] or job["attempts"] >= job["max_attempts"]:
                pipe.reset()
                err = cancelled_error() if job["cancel_requested"] else worker_lost_error(job)
                ended = self.finish_unowned(job_id, "cancelled" if job["cancel_requested"] else "failed", error=err)
                if ended:  # its worker died without a word (SIGKILL, a lost node): a lost attempt
                    self.r.hincrby(redis_keys.stats("attempts_lost"), job["kind"], 1)
                return "ended" if ended else None
            dispatch_id = new_id()
            pipe.multi()
            # Counted here, not by the worker: a SIGKILLed pod never reports how its attempt ended.
            pipe.hincrby(redis_keys.stats("attempts_lost"), job["kind"], 1)
            # A yield asked of the lost attempt (a drain that killed it) is void: the next one runs.
            pipe.hset(key, mapping=encode({"state": "queued", "dispatch_id": dispatch_id, "preempt": None}))
            pipe.srem(redis_keys.RUNNING, job_id)
            pipe.zadd(redis_keys.DISPATCHED, {job_id: time.time()})
            job_counts.move(pipe, job, "queued", sent=True)  # still dispatched: a new message follows
            return job, dispatch_id

        outcome = self._transaction(attempt, key, lease)
        if isinstance(outcome, tuple):
            job = outcome[0]
            self.event(
                job_id,
                "requeued",
                f"worker {job['worker']} lost; requeued after attempt {job['attempts']} of {job['max_attempts']}",
            )
        return outcome

    def _dispatch_stranded(self, older_than_s: float) -> list[tuple[dict, str]]:
        """Queued jobs never sent, though ready, created more than `older_than_s` ago: the process
        that created one died (or lost Redis) before sending it, and its client never retried."""
        out = []
        for team in self.teams.teams():
            pipe = self.r.pipeline(transaction=False)
            pipe.sdiff([redis_keys.team(team, "open"), redis_keys.team(team, "active")])
            pipe.zrange(redis_keys.team(team, "waiting"), 0, -1)
            unsent, waiting = pipe.execute()
            for job_id in set(unsent) - set(waiting):  # at most the team's max_queued
                raw = self.r.hmget(redis_keys.job(job_id), *SUMMARY_FIELDS)  # not the spec: read again each pass
                job = {f: json.loads(v) for f, v in zip(SUMMARY_FIELDS, raw, strict=False) if v is not None}
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
        pipe.srem(redis_keys.RUNNING, job_id)
        for team in self.teams.teams():
            pipe.srem(redis_keys.team(team, "open"), job_id)
            pipe.srem(redis_keys.team(team, "active"), job_id)
        pipe.execute()

    def _end_overdue(self, grace_s: float) -> list[str]:
        """Fail, as `time_limit`, running and requeued jobs more than `grace_s` past their limit."""
        ended = []
        candidates = cast(set[str], self.r.smembers(redis_keys.RUNNING)) | set(
            cast(list[str], self.r.zrange(redis_keys.DISPATCHED, 0, -1))
        )
        for job_id in candidates:
            limit, started = (
                json.loads(v) if v else None for v in self.r.hmget(redis_keys.job(job_id), "time_limit_s", "started_at")
            )
            if not limit or not started or time.time() - started <= limit + grace_s:
                continue
            message = self._fail_overdue(job_id)
            if message is not None:
                self.event(job_id, "failed", message)
                ended.append(job_id)
        return ended

    def _fail_overdue(self, job_id: str) -> str | None:
        """Fail a job past its time limit unless it ended meanwhile; the error message if failed."""
        key, lease = redis_keys.job(job_id), redis_keys.job_lease(job_id)

        def attempt(pipe: Pipeline) -> str | None:
            job = decode(pipe.hgetall(key))
            if "id" not in job or job["state"] in TERMINAL:
                return None
            error = time_limit_error(job["time_limit_s"], time.time() - job["started_at"])
            error["message"] += "; its worker did not stop it, so it was ended without it"
            # A worker that still holds the lease still computes: it keeps the team's slot
            # until it lets go (its next heartbeat tells it to stop) or its lease expires.
            held = job["state"] == "running" and pipe.exists(lease)
            pipe.multi()
            self._end(pipe, job, "failed", error, None, release=not held)
            if not held:
                pipe.delete(lease)
            return error["message"]

        return self._transaction(attempt, key, lease)

    def _redispatch_lost(self, older_than_s: float, waiting: Callable[[], set[str]]) -> list[tuple[dict, str]]:
        due = cast(list[str], self.r.zrangebyscore(redis_keys.DISPATCHED, "-inf", time.time() - older_than_s))
        if not due:
            return []
        on_queue = waiting()
        resend = []
        for job_id in due:
            sent = self._new_dispatch(job_id, on_queue)
            if sent is not None:
                self.event(
                    job_id,
                    "redispatched",
                    f"no worker took the job within {older_than_s:.0f} s and its message is not on its queue; sent again",
                )
                resend.append(sent)
        return resend

    def _new_dispatch(self, job_id: str, on_queue: set[str]) -> tuple[dict, str] | None:
        """A new dispatch id for a sent job whose message is not on its queue: (job, dispatch_id)
        to send again. A job no longer sent and queued leaves DISPATCHED."""
        key = redis_keys.job(job_id)

        def attempt(pipe: Pipeline) -> tuple[dict, str] | None:
            job = decode(pipe.hgetall(key))
            if not job or job["state"] != "queued" or not job["dispatched"]:
                pipe.reset()
                self.r.zrem(redis_keys.DISPATCHED, job_id)
                return None
            if job["dispatch_id"] in on_queue:
                return None  # waiting its turn
            # A new dispatch id: should the old message turn up after all, it is skipped.
            dispatch_id = new_id()
            pipe.multi()
            pipe.hset(key, "dispatch_id", json.dumps(dispatch_id))
            pipe.zadd(redis_keys.DISPATCHED, {job_id: time.time()})
            return job, dispatch_id

        return self._transaction(attempt, key)

    def recently_ended(self, slack_s: float = 2 * REDIS_RETRY_S + 10) -> list[str]:
        """Jobs ended since the previous call (by any API replica), and in the `slack_s` before it.
        The reaper starts their dependents again, in case the process that ended them died first
        (starting them twice is harmless)."""
        now = time.time()
        last = self.r.getset(redis_keys.REAPER_ENDED_SEEN, json.dumps(now))
        since = (json.loads(last) if last else now) - slack_s
        return cast(list[str], self.r.zrangebyscore(redis_keys.FINISHED, since, "+inf"))
