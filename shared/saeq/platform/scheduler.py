"""The fair-share scheduler: which waiting job gets a free slot on a queue, across teams, and which
running job to preempt for a waiting one. The policy, with a worked example: docs/scheduling.md.

A job ready to run (dependencies succeeded) waits in its team's waiting set while its team has no
free slot (quota max_running) or its queue no free capacity (the live workers' slots,
saeq.platform.pools, minus the jobs sent there and not ended). `schedule` fills the free capacity:
each time, the team with the least (decayed usage + the cost of its next job) / share_weight,
ties to the higher head priority, then the older head, sends its best job (priority, then age).
One pass at a time over every process (a short Redis lock); a call that finds the lock taken asks
the holder to run once more, so no freed slot is missed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from saeq.platform import pools, redis_keys
from saeq.platform.fair_share import SchedulingPolicy, read_policy, shares, usages
from saeq.platform.job_model import decode, new_id, waiting_score
from saeq.platform.job_submit import DISPATCHED, NO_CAPACITY, NO_TEAM_SLOT
from saeq.specs.states import TERMINAL

if TYPE_CHECKING:
    from saeq.platform.registry import Registry

Send = Callable[[dict, str], None]

LOCK_TTL_S = 10.0
"""Longer than a pass (a few ms a decision, plus sending): a holder that died frees it by then."""
MAX_ROUNDS = 20
LOOK_AHEAD = 16
"""Waiting jobs read per team and pass: a pass sends at most the capacity freed since the last,
and preempts at most one job per running one. A team's jobs on one queue beyond its first 16
waiting (of any queue) wait for those to move: reading every waiting job each pass would cost
the pass ~1 ms per 100 jobs."""
_SUMMARY = ("id", "kind", "queue", "team", "priority", "created_at", "state", "dispatched")
_RUNNING = ("id", "team", "priority", "state", "started_at", "last_started_at", "preemptions", "preempt")
_UNLOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
FAR_UNDER, FAR_OVER = 0.5, 1.5
"""usage share / target below which a team may preempt one above FAR_OVER, whatever priorities."""

_queue_of: dict[str, str] = {}
"""Job id -> queue: a job's queue never changes, so each process reads it once."""

Lines = dict[str, list[tuple[float, str]]]
"""team -> its waiting jobs on one queue, best first, as (waiting score, job id)."""


def schedule(registry: Registry, send: Send) -> list[str]:
    """Dispatch waiting jobs across teams by fair share while their queues have capacity, then
    ask for the preemptions the policy allows. Returns the ids sent. Safe from many processes."""
    r, sent = registry.r, []
    lock = redis_keys.lock("schedule")
    for _ in range(MAX_ROUNDS):
        token = new_id()
        if not r.set(lock, token, nx=True, px=int(LOCK_TTL_S * 1000)):
            r.set(redis_keys.SCHEDULE_AGAIN, "1", px=int(LOCK_TTL_S * 1000))
            return sent  # the holder runs again for us
        try:
            r.delete(redis_keys.SCHEDULE_AGAIN)
            sent += schedule_pass(registry, send)
        finally:
            r.eval(_UNLOCK, 1, lock, token)
        if not r.exists(redis_keys.SCHEDULE_AGAIN):
            break
    return sent


def schedule_pass(registry: Registry, send: Send, policy: SchedulingPolicy | None = None) -> list[str]:
    """One pass over every queue with waiting jobs (the caller holds the lock)."""
    policy = policy or read_policy(registry.r)
    sent = []
    for queue, lines in waiting_lines(registry).items():
        ranking = Ranking.read(registry, lines, policy)
        sent += fill_queue(registry, send, queue, lines, ranking)
        if any(lines.values()):
            preempt_for_waiting(registry, queue, lines, ranking, policy)
    return sent


def waiting_lines(registry: Registry, look_ahead: int = LOOK_AHEAD) -> dict[str, Lines]:
    """queue -> team -> its waiting jobs on that queue, best first: the first `look_ahead` of each
    team's waiting set (-1: all of it)."""
    r = registry.r
    teams = sorted({*registry.teams.teams(), "default"})
    pipe = r.pipeline(transaction=False)
    for team in teams:
        pipe.zrange(redis_keys.team(team, "waiting"), 0, look_ahead - 1 if look_ahead > 0 else -1, withscores=True)
    per_team = dict(zip(teams, cast(list[list[tuple[str, float]]], pipe.execute()), strict=True))
    unknown = [job_id for rows in per_team.values() for job_id, _ in rows if job_id not in _queue_of]
    if unknown:
        if len(_queue_of) > 200_000:
            _queue_of.clear()
        pipe = r.pipeline(transaction=False)
        for job_id in unknown:
            pipe.hget(redis_keys.job(job_id), "queue")
        for job_id, raw in zip(unknown, pipe.execute(), strict=True):
            if raw is not None:
                _queue_of[job_id] = decode({"queue": raw})["queue"]
    out: dict[str, Lines] = {}
    for team, rows in per_team.items():
        for job_id, score in rows:
            if (queue := _queue_of.get(job_id)) is not None:
                out.setdefault(queue, {}).setdefault(team, []).append((score, job_id))
    return out


@dataclass
class Ranking:
    """Each team's place in line: (usage_s + charged + next_cost) / weight, lowest first."""

    usage_s: dict[str, float]
    next_cost_s: dict[str, float]
    weight: dict[str, float]
    charge_s: float
    """What a job sent in this pass adds to its team until heartbeats count it: the team's average
    attempt, or else the minimum run time (a job sent runs at least that long, or ends sooner)."""

    @classmethod
    def read(cls, registry: Registry, lines: Lines, policy: SchedulingPolicy) -> Ranking:
        used = usages(registry.r, lines, half_life_s=policy.half_life_s)
        return cls(
            usage_s={t: u for t, (u, _) in used.items()},
            next_cost_s={t: c for t, (_, c) in used.items()},
            weight={t: registry.teams.quota(t).share_weight for t in lines},
            charge_s=policy.min_run_s,
        )

    def key(self, team: str, head_score: float) -> tuple[float, float]:
        # The head's waiting score orders ties: higher priority, then older (job_model.waiting_score).
        return ((self.usage_s[team] + self.next_cost_s[team]) / self.weight[team], head_score)

    def next_team(self, lines: Lines, skip: set[str] | frozenset[str] = frozenset()) -> str | None:
        teams = [t for t, line in lines.items() if line and t not in skip]
        return min(teams, key=lambda t: self.key(t, lines[t][0][0])) if teams else None

    def charge(self, team: str) -> None:
        self.usage_s[team] += self.next_cost_s[team] or self.charge_s


def fill_queue(registry: Registry, send: Send, queue: str, lines: Lines, ranking: Ranking) -> list[str]:
    """Send the queue's waiting jobs in fair-share order while it has free capacity. `lines` keeps
    what still waits."""
    free, sent, no_slot = free_capacity(registry, queue), [], set()
    while (free is None or free > 0) and (team := ranking.next_team(lines, no_slot)) is not None:
        score, job_id = lines[team].pop(0)
        raw = registry.r.hmget(redis_keys.job(job_id), *_SUMMARY)
        job = decode({f: v for f, v in zip(_SUMMARY, raw, strict=True) if v is not None})
        if "id" not in job:
            registry.r.zrem(redis_keys.team(team, "waiting"), job_id)  # its record expired
            continue
        status, dispatch_id = registry.try_dispatch(job)
        if status == DISPATCHED:
            send(job, dispatch_id)
            sent.append(job_id)
            ranking.charge(team)
            free = None if free is None else free - 1
        elif status in (NO_TEAM_SLOT, NO_CAPACITY):
            lines[team].insert(0, (score, job_id))  # back in its waiting set too (the script)
            if status == NO_CAPACITY:
                break
            no_slot.add(team)  # it waits for one of its own jobs to end (or be preempted)
    return sent


def free_capacity(registry: Registry, queue: str) -> int | None:
    """Slots of the live workers on `queue` not held by a job sent there and not ended; None when
    no worker advertises the queue (not gated). Drops from the queue's set the jobs that left it
    by a path that did not say so (a record expired, a requeue by an older process)."""
    r = registry.r
    capacity = pools.capacity(r, queue)
    if capacity is None:
        return None
    key = redis_keys.queue_dispatched(queue)
    members = sorted(cast(set[str], r.smembers(key)))
    pipe = r.pipeline(transaction=False)
    for job_id in members:
        pipe.hmget(redis_keys.job(job_id), "state", "dispatched")
        pipe.sismember(redis_keys.RUNNING, job_id)
    rows = pipe.execute() if members else []
    stale = [
        job_id
        for job_id, (state, dispatched), running in zip(members, rows[::2], rows[1::2], strict=True)
        if not running and (state is None or (state == '"queued"' and dispatched != "true") or _ended(state))
    ]
    if stale:
        r.srem(key, *stale)
    return max(0, capacity - (len(members) - len(stale)))


def _ended(state: str | None) -> bool:
    return state is not None and decode({"state": state})["state"] in TERMINAL


def preempt_for_waiting(
    registry: Registry, queue: str, lines: Lines, ranking: Ranking, policy: SchedulingPolicy, now: float | None = None
) -> list[str]:
    """Ask running jobs on a full queue to yield for the best waiting jobs, as docs/scheduling.md
    states: (a) a waiting job of higher priority than a running one of its own team, or of another
    team while the waiting team is below its share; (b) a waiting team far under its share (usage
    share / target < 0.5) against a running team far over it (> 1.5). Only victims of a
    `preemptible` team, for a team that `may_preempt`, that ran `min_run_s` since their last start
    and were preempted fewer than `max_preemptions` times. One victim per waiting job: each
    preemption in flight counts for one of the best waiters. Returns the victims asked."""
    now = time.time() if now is None else now
    running = running_on(registry, queue)
    in_flight = sum(1 for v in running if v.get("preempt"))
    victims = [v for v in running if may_be_preempted(registry, v, policy, now)]
    if not victims:
        return []  # the usual case, in two round trips
    waiters = in_turn(lines, ranking, len(running))[in_flight:]
    ratio = share_ratios(registry, policy.half_life_s)
    pipe = registry.r.pipeline(transaction=False)
    for team, _ in waiters:
        pipe.scard(redis_keys.team(team, "active"))
    active = pipe.execute() if waiters else []
    asked: list[str] = []
    for (team, (score, waiter)), n_active in zip(waiters, active, strict=True):
        quota = registry.teams.quota(team)
        if not quota.may_preempt:
            continue
        # A team at its own max_running gains nothing from another team's slot: only its own jobs.
        victim = choose_victim(team, _priority(score), victims, ratio, own_only=n_active >= quota.max_running)
        if victim is None:
            continue
        reason = (
            f"job {waiter} of team {team!r} waits for {queue!r} (priority {_priority(score)}, usage/target "
            f"{ratio.get(team, 0.0):.2f}; this job's team {victim['team']!r}: {ratio.get(victim['team'], 0.0):.2f})"
        )
        if registry.request_preempt(victim["id"], reason):
            asked.append(victim["id"])
        victims.remove(victim)
    return asked


def may_be_preempted(registry: Registry, job: dict[str, Any], policy: SchedulingPolicy, now: float) -> bool:
    """The guards on the victim's side: running, not asked already, its team `preemptible`, run
    `min_run_s` since its last (re)start, preempted fewer than `max_preemptions` times."""
    if job.get("preempt") or job["state"] != "running" or not registry.teams.quota(job["team"]).preemptible:
        return False
    if int(job.get("preemptions") or 0) >= policy.max_preemptions:
        return False
    return now - (job.get("last_started_at") or job.get("started_at") or now) >= policy.min_run_s


def in_turn(lines: Lines, ranking: Ranking, n: int) -> list[tuple[str, tuple[float, str]]]:
    """The first `n` waiting jobs in the order `schedule` would send them, as (team, head)."""
    lines = {t: list(line) for t, line in lines.items()}
    ranking = Ranking(dict(ranking.usage_s), ranking.next_cost_s, ranking.weight, ranking.charge_s)
    out = []
    while len(out) < n and (team := ranking.next_team(lines)) is not None:
        out.append((team, lines[team].pop(0)))
        ranking.charge(team)
    return out


def choose_victim(
    team: str, priority: int, victims: list[dict[str, Any]], ratio: dict[str, float], *, own_only: bool
) -> dict[str, Any] | None:
    """The job among `victims` a waiting job of `team` at `priority` may preempt by rule (a) or
    (b): the lowest priority, then the most over its share, then the latest started (it loses the
    least); None if none."""
    mine = ratio.get(team, 0.0)

    def allowed(v: dict[str, Any]) -> bool:
        vteam = v["team"]
        if own_only and vteam != team:
            return False
        by_priority = priority > (v.get("priority") or 0) and (vteam == team or mine < 1.0)
        by_share = vteam != team and mine < FAR_UNDER and ratio.get(vteam, 0.0) > FAR_OVER
        return by_priority or by_share

    candidates = [v for v in victims if allowed(v)]
    if not candidates:
        return None
    return min(
        candidates,
        key=lambda v: (v.get("priority") or 0, -ratio.get(v["team"], 0.0), -(v.get("last_started_at") or 0)),
    )


def running_on(registry: Registry, queue: str) -> list[dict[str, Any]]:
    """The jobs sent on `queue` and not ended, with what the preemption rules read."""
    ids = sorted(cast(set[str], registry.r.smembers(redis_keys.queue_dispatched(queue))))
    pipe = registry.r.pipeline(transaction=False)
    for job_id in ids:
        pipe.hmget(redis_keys.job(job_id), *_RUNNING)
    rows = pipe.execute() if ids else []
    jobs = [decode({f: v for f, v in zip(_RUNNING, row, strict=True) if v is not None}) for row in rows]
    return [{**j, "team": j.get("team") or "default"} for j in jobs if "id" in j]


def share_ratios(registry: Registry, half_life_s: float) -> dict[str, float]:
    """team -> its share of all usage over its target (1.0: exactly its share; 0 while nobody
    used anything)."""
    return {
        t: (v["share"] / v["target"] if v["target"] > 0 else 0.0)
        for t, v in shares(registry, half_life_s=half_life_s).items()
    }


def _priority(score: float) -> int:
    """The priority a waiting score encodes (job_model.waiting_score)."""
    return 9 - int(score // 1e10)


def jobs_ahead(registry: Registry, team: str, priority: int, queue: str) -> int:
    """How many waiting jobs on `queue` would be sent before a new job of `team` at `priority`,
    under the current usage, in the order `schedule` sends them (team slots aside)."""
    lines = waiting_lines(registry, look_ahead=-1).get(queue, {})
    new = (waiting_score(priority, time.time()), "")
    lines[team] = sorted([*lines.get(team, []), new])
    ranking = Ranking.read(registry, lines, read_policy(registry.r))
    ahead = 0
    while (next_team := ranking.next_team(lines)) is not None:
        if lines[next_team].pop(0) == new:
            return ahead
        ahead += 1
        ranking.charge(next_team)
    return ahead
