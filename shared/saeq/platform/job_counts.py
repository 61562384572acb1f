"""Stored jobs by kind and state and by team and state, and each queue's jobs waiting for a worker,
kept in Redis by the transaction that changes a record's state: /metrics reads a few hashes and one
sorted-set head per queue, O(kinds x states + teams x states), never every stored job.

Every state change counts itself: `move` in a MULTI/EXEC pipeline (claim, end, reaper requeue,
preemption requeue), the create and dispatch scripts with the fields built here. A record that
expires by its TTL cannot be seen going, so an ended job also enters COUNT_EXPIRING, scored by
when its record expires, and `settle` (each read, and the reaper's sweep) drops from the counts
each due job whose record is gone: once, as a purge drops the ones it deletes (PURGE_RECORD), since
either removes the job from that set and only a missing (or just deleted) record is counted out.
Counters older than this module (an upgrade) are rebuilt once from the records by one script
(`recount`, O(stored jobs)) when COUNT_VERSION is missing; deleting that key repairs them the
same way. `Registry.census()` stays the reference the tests compare with.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.client import Pipeline

from saeq.platform import lua_scripts, redis_keys

VERSION = "1"
SETTLE_BATCH = 5000
"""Expired jobs one settle script drops at most (a backlog is settled over several calls)."""


def kind_field(kind: str, state: str) -> str:
    return f"{kind}|{state}"


def team_field(team: str, state: str) -> str:
    return f"{team}|{state}"


def _team(job: dict[str, Any]) -> str:
    return job.get("team") or "default"


def move(pipe: Pipeline, job: dict[str, Any], state: str, *, sent: bool = False) -> None:
    """In the transaction `pipe` that writes it: `job` (its record as read, before the change)
    goes to `state`; `sent`: it is then queued with a message on its queue, waiting for a worker."""
    kind, team, was = job["kind"], _team(job), job["state"]
    if was != state:
        pipe.hincrby(redis_keys.COUNT_KIND_STATE, kind_field(kind, was), -1)
        pipe.hincrby(redis_keys.COUNT_KIND_STATE, kind_field(kind, state), 1)
        pipe.hincrby(redis_keys.COUNT_TEAM_STATE, team_field(team, was), -1)
        pipe.hincrby(redis_keys.COUNT_TEAM_STATE, team_field(team, state), 1)
    if sent:
        pipe.zadd(redis_keys.queue_sent(job["queue"]), {job["id"]: job["created_at"]})
    else:
        pipe.zrem(redis_keys.queue_sent(job["queue"]), job["id"])


def expiring_member(job: dict[str, Any], state: str) -> str:
    """The ended job's COUNT_EXPIRING member: what `settle` needs once its record is gone."""
    return f"{job['id']}|{job['kind']}|{_team(job)}|{state}"


def settle(r: redis.Redis) -> int:
    """Drop from the counts the ended jobs whose record expired. Returns how many."""
    total, now = 0, time.time()
    while True:
        dropped = int(
            cast(
                int,
                r.eval(
                    lua_scripts.SETTLE_EXPIRED,
                    3,
                    redis_keys.COUNT_EXPIRING,
                    redis_keys.COUNT_KIND_STATE,
                    redis_keys.COUNT_TEAM_STATE,
                    redis_keys.JOB_PREFIX,
                    now,
                    SETTLE_BATCH,
                ),
            )
        )
        total += dropped
        if dropped < SETTLE_BATCH:
            return total


def recount(r: redis.Redis, queues: tuple[str, ...]) -> int:
    """Rebuild every count from the records, atomically (one script, O(stored jobs)). Returns the
    number of jobs read."""
    return int(
        cast(
            int,
            r.eval(
                lua_scripts.RECOUNT,
                5 + len(queues),
                redis_keys.ALL_JOBS,
                redis_keys.COUNT_KIND_STATE,
                redis_keys.COUNT_TEAM_STATE,
                redis_keys.COUNT_EXPIRING,
                redis_keys.COUNT_VERSION,
                *(redis_keys.queue_sent(q) for q in queues),
                redis_keys.JOB_PREFIX,
                time.time(),
                VERSION,
                *queues,
            ),
        )
    )


@dataclass(frozen=True)
class JobCounts:
    by_kind: dict[tuple[str, str], int]
    """(kind, state) -> stored jobs (0 for a pair that had some)."""
    by_team: dict[tuple[str, str], int]
    """(team, state) -> stored jobs."""
    oldest_sent_at: dict[str, float | None]
    """Queue -> created_at of its oldest job waiting for a worker (None: none waits)."""


def read(r: redis.Redis, queues: tuple[str, ...]) -> JobCounts:
    """The counts, settled, in two round trips (three the first time: the recount)."""
    for _ in range(2):
        settle(r)
        pipe = r.pipeline(transaction=False)
        pipe.get(redis_keys.COUNT_VERSION)
        pipe.hgetall(redis_keys.COUNT_KIND_STATE)
        pipe.hgetall(redis_keys.COUNT_TEAM_STATE)
        for q in queues:
            pipe.zrange(redis_keys.queue_sent(q), 0, 0, withscores=True)
        version, by_kind, by_team, *heads = pipe.execute()
        if version == VERSION:
            return JobCounts(
                by_kind=_pairs(by_kind),
                by_team=_pairs(by_team),
                oldest_sent_at={q: (head[0][1] if head else None) for q, head in zip(queues, heads, strict=True)},
            )
        recount(r, queues)
    raise RuntimeError(f"the job counts' version is not {VERSION} after a recount: another saeq version writes them")


def _pairs(raw: dict[str, str]) -> dict[tuple[str, str], int]:
    out = {}
    for field, n in raw.items():
        label, state = field.rsplit("|", 1)
        out[(label, state)] = int(n)
    return out
