"""Dropping ended jobs: the indexes of records that expired, and purging ended jobs at once."""

from __future__ import annotations

import json
import time
from typing import cast

from saeq import keys
from saeq.platform import job_counts, lua_scripts, redis_keys
from saeq.platform.job_core import JobCore


class Purging(JobCore):
    """Sweep and purge ended jobs."""

    def sweep_expired(self, limit: int = 1000) -> int:
        """Drop from the indexes up to `limit` jobs whose records expired, and delete their specs
        kept in the store. The reaper calls it; the counts are right without it (job_counts settles
        at each read too; here its set of expiring jobs stays small without scrapes)."""
        due = cast(list[str], self.r.zrangebyscore(redis_keys.EXPIRING, "-inf", time.time(), start=0, num=limit))
        self._forget([_team_and_id(m) for m in due])
        job_counts.settle(self.r)
        return len(due)

    def purge(self, *, team: str | None = None, ended_before: float | None = None) -> list[str]:
        """Delete now the ended jobs (of one team, or all) that ended before `ended_before`
        (default: now): records, events, index entries and specs in the store. Their artifacts
        stay. Returns their ids."""
        cutoff = time.time() if ended_before is None else ended_before
        if team is not None:
            candidates = [
                (team, job_id) for job_id in cast(list[str], self.r.zrange(redis_keys.team(team, "ended"), 0, -1))
            ]
        else:
            candidates = [_team_and_id(m) for m in cast(list[str], self.r.zrange(redis_keys.EXPIRING, 0, -1))]
        purged = []
        # Ended under a worker that still computes it: its team's slot is freed when the worker
        # lets go, which needs the record; purged on a later call.
        held = self.r.smembers(redis_keys.RUNNING)
        candidates = [(t, job_id) for t, job_id in candidates if job_id not in held]
        for i in range(0, len(candidates), 500):
            chunk = candidates[i : i + 500]
            pipe = self.r.pipeline(transaction=False)
            for _, job_id in chunk:
                pipe.hget(redis_keys.job(job_id), "finished_at")
            for (t, job_id), finished in zip(chunk, pipe.execute(), strict=False):
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
            if delete:  # counted out of job_counts with the record, in one step
                pipe.eval(
                    lua_scripts.PURGE_RECORD,
                    6,
                    redis_keys.job(job_id),
                    redis_keys.job_events(job_id),
                    redis_keys.job_dependents(job_id),
                    redis_keys.COUNT_EXPIRING,
                    redis_keys.COUNT_KIND_STATE,
                    redis_keys.COUNT_TEAM_STATE,
                    job_id,
                )
            pipe.zrem(redis_keys.ALL_JOBS, job_id)
            pipe.zrem(redis_keys.team(team, "jobs"), job_id)
            pipe.zrem(redis_keys.team(team, "ended"), job_id)
            pipe.zrem(redis_keys.EXPIRING, f"{team}/{job_id}")
            pipe.zrem(redis_keys.FINISHED, job_id)
            pipe.srem(redis_keys.SPECS_IN_STORE, job_id)
        had_spec = pipe.execute()[5 + int(delete) :: 6 + int(delete)]  # the srem of each job
        for (_, job_id), in_store in zip(jobs, had_spec, strict=False):
            if in_store and self.spec_store is not None:
                self.spec_store.delete(keys.job_spec(job_id))


def _team_and_id(member: str) -> tuple[str, str]:
    """(team, job id) of an EXPIRING member `team/job_id`."""
    team, job_id = member.split("/", 1)
    return team, job_id
