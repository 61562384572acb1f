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

import heapq
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from saeq.platform import redis_keys, schedule_snapshot
from saeq.platform.fair_share import SchedulingPolicy, shares_of
from saeq.platform.job_model import new_id, waiting_score
from saeq.platform.job_submit import DISPATCHED, NO_CAPACITY, NO_TEAM_SLOT
from saeq.platform.schedule_snapshot import Lines, Snapshot
from saeq.platform.teams import TeamQuota

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
FAR_UNDER, FAR_OVER = 0.5, 1.5
"""usage share / target below which a team may preempt one above FAR_OVER, whatever priorities."""


def schedule(registry: Registry, send: Send) -> list[str]:
    """Dispatch waiting jobs across teams by fair share while their queues have capacity, then
    ask for the preemptions the policy allows. Returns the ids sent. Safe from many processes."""
    sent: list[str] = []
    for _ in range(MAX_ROUNDS):
        token = new_id()
        snap = schedule_snapshot.read(
            registry, lock_token=token, lock_ttl_ms=int(LOCK_TTL_S * 1000), look_ahead=LOOK_AHEAD
        )
        if snap is None:
            return sent  # the holder runs again for us
        try:
            new, preempt = schedule_pass(registry, send, snap)
        except BaseException:
            schedule_snapshot.release(registry, token)
            raise
        sent += new
        # The preemption requests ride on the lock's release: one round trip however many victims.
        if not schedule_snapshot.release(registry, token, preempt):
            break
    return sent


def schedule_pass(
    registry: Registry, send: Send, snap: Snapshot, now: float | None = None
) -> tuple[list[str], list[tuple[str, str]]]:
    """One pass over every queue with waiting jobs (the caller holds the lock `snap` was read
    under). `snap.lines` and `snap.active` follow what the pass sends. Returns the ids sent and
    the preemptions to ask, (job id, reason): the caller asks them as it frees the lock."""
    now = time.time() if now is None else now
    sent, ratio, preempt = [], None, []
    for queue, lines in snap.lines.items():
        ranking = Ranking.of(snap, lines)
        stale = snap.stale(queue) if queue in snap.capacity else []  # an ungated queue counts nothing
        if stale:
            registry.r.srem(redis_keys.queue_dispatched(queue), *stale)
        n_dispatched = len(snap.members.get(queue, [])) - len(stale)
        free = None if queue not in snap.capacity else max(0, snap.capacity[queue] - n_dispatched)
        new = fill_queue(registry, send, snap, queue, ranking, free)
        sent += new
        if any(lines.values()):
            rows = snap.dispatched_rows(queue, stale)
            ratio = ratio if ratio is not None else share_ratios(snap)
            preempt += preempt_for_waiting(snap, queue, ranking, rows, len(new), ratio, now)
    return sent, preempt


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
    def of(cls, snap: Snapshot, lines: Lines) -> Ranking:
        used = {t: snap.usage.get(t, (0.0, 0.0)) for t in lines}
        return cls(
            usage_s={t: u for t, (u, _) in used.items()},
            next_cost_s={t: c for t, (_, c) in used.items()},
            weight={t: _quota(snap, t).share_weight for t in lines},
            charge_s=snap.policy.min_run_s,
        )

    def key(self, team: str, head_score: float) -> tuple[float, float]:
        # The head's waiting score orders ties: higher priority, then older (job_model.waiting_score).
        return ((self.usage_s[team] + self.next_cost_s[team]) / self.weight[team], head_score)

    def charge(self, team: str) -> None:
        self.usage_s[team] += self.next_cost_s[team] or self.charge_s


class Turns:
    """The teams of `lines` in the order `schedule` serves them: a heap on Ranking.key (ties on
    the whole key go to the team name, the order `min` over sorted teams gave), so a dispatch
    costs O(log teams), not a key per team. `lines` and `ranking` change as teams take turns."""

    def __init__(self, lines: Lines, ranking: Ranking):
        self.lines, self.ranking = lines, ranking
        self._heap = [(*ranking.key(t, line[0][0]), t) for t, line in lines.items() if line]
        heapq.heapify(self._heap)

    def next(self) -> str | None:
        """The team whose turn it is, out of the heap until `served` or `requeue`."""
        return heapq.heappop(self._heap)[-1] if self._heap else None

    def served(self, team: str) -> tuple[float, str]:
        """`team` sends its head: charged, back in the heap by its next head. Returns the head."""
        head = self.lines[team].pop(0)
        self.ranking.charge(team)
        self.requeue(team)
        return head

    def requeue(self, team: str) -> None:
        if line := self.lines[team]:
            heapq.heappush(self._heap, (*self.ranking.key(team, line[0][0]), team))


def fill_queue(
    registry: Registry, send: Send, snap: Snapshot, queue: str, ranking: Ranking, free: int | None
) -> list[str]:
    """Send the queue's waiting jobs in fair-share order while it has free capacity (`free`; None:
    not gated). `snap.lines[queue]` keeps what still waits."""
    lines, sent = snap.lines[queue], []
    turns = Turns(lines, ranking)
    while (free is None or free > 0) and (team := turns.next()) is not None:
        job_id = lines[team][0][1]
        job = snap.head(registry.r, job_id)
        status, dispatch_id = registry.try_dispatch(job, snap.capacity.get(queue), _quota(snap, team).max_running)
        if status == DISPATCHED:
            turns.served(team)
            send(job, dispatch_id)
            sent.append(job_id)
            snap.active[team] = snap.active.get(team, 0) + 1
            free = None if free is None else free - 1
        elif status == NO_CAPACITY:
            break  # it stays first in its team's line, and in its waiting set (the script)
        elif status != NO_TEAM_SLOT:
            lines[team].pop(0)  # ended or sent already: the script dropped it from the waiting set
            turns.requeue(team)
        # NO_TEAM_SLOT: the team is out of the heap for the pass; it waits for one of its own jobs
        # to end (or be preempted)
    return sent


def _quota(snap: Snapshot, team: str) -> TeamQuota:
    return snap.quotas.get(team) or TeamQuota()


def preempt_for_waiting(
    snap: Snapshot,
    queue: str,
    ranking: Ranking,
    rows: list[list[Any]],
    n_new: int,
    ratio: dict[str, float],
    now: float,
) -> list[tuple[str, str]]:
    """Ask running jobs on a full queue to yield for the best waiting jobs, as docs/scheduling.md
    states: (a) a waiting job of higher priority than a running one of its own team, or of another
    team while the waiting team is below its share; (b) a waiting team far under its share (usage
    share / target < 0.5) against a running team far over it (> 1.5). Only victims of a
    `preemptible` team, for a team that `may_preempt`, that ran `min_run_s` since their last start
    and were preempted fewer than `max_preemptions` times. One victim per waiting job: each
    preemption in flight counts for one of the best waiters. `rows`: the queue's dispatched jobs
    as the snapshot read them (schedule_snapshot.MEMBER); `n_new`: how many this pass sent there
    since. Returns the preemptions to ask, (victim id, reason): one script asks them all
    (schedule_snapshot.release), where one WATCH transaction and an event each cost ~4 round trips."""
    policy, lines = snap.policy, snap.lines[queue]
    asked_already = [schedule_snapshot.asked_to_yield(row) for row in rows]
    in_flight = sum(asked_already)
    # Only a running job not asked yet can be a victim: the others are never decoded.
    candidates = [
        schedule_snapshot.job(row)
        for row, asked in zip(rows, asked_already, strict=True)
        if not asked and schedule_snapshot.running(row)
    ]
    victims = [v for v in candidates if may_be_preempted(v, policy, now, _quota(snap, v["team"]))]
    if not victims:
        return []  # the usual case: no round trip
    waiters = in_turn(lines, ranking, len(rows) + n_new)[in_flight:]
    asked: list[tuple[str, str]] = []
    for team, (score, waiter) in waiters:
        quota = _quota(snap, team)
        if not quota.may_preempt:
            continue
        # A team at its own max_running gains nothing from another team's slot: only its own jobs.
        own_only = snap.active.get(team, 0) >= quota.max_running
        victim = choose_victim(team, _priority(score), victims, ratio, own_only=own_only)
        if victim is None:
            continue
        reason = (
            f"job {waiter} of team {team!r} waits for {queue!r} (priority {_priority(score)}, usage/target "
            f"{ratio.get(team, 0.0):.2f}; this job's team {victim['team']!r}: {ratio.get(victim['team'], 0.0):.2f})"
        )
        asked.append((victim["id"], reason))
        victims.remove(victim)
    return asked


def may_be_preempted(job: dict[str, Any], policy: SchedulingPolicy, now: float, quota: TeamQuota) -> bool:
    """The guards on the victim's side: running, not asked already, its team (`quota`)
    `preemptible`, run `min_run_s` since its last (re)start, preempted fewer than
    `max_preemptions` times."""
    if job.get("preempt") or job.get("state") != "running" or not quota.preemptible:
        return False
    if int(job.get("preemptions") or 0) >= policy.max_preemptions:
        return False
    return now - (job.get("last_started_at") or job.get("started_at") or now) >= policy.min_run_s


def in_turn(lines: Lines, ranking: Ranking, n: int) -> list[tuple[str, tuple[float, str]]]:
    """The first `n` waiting jobs in the order `schedule` would send them, as (team, head)."""
    lines = {t: list(line) for t, line in lines.items()}
    turns = Turns(lines, Ranking(dict(ranking.usage_s), ranking.next_cost_s, ranking.weight, ranking.charge_s))
    out = []
    while len(out) < n and (team := turns.next()) is not None:
        out.append((team, turns.served(team)))
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


def share_ratios(snap: Snapshot) -> dict[str, float]:
    """team -> its share of all usage over its target (1.0: exactly its share; 0 while nobody
    used anything)."""
    rows = shares_of(
        {t: _quota(snap, t).share_weight for t in snap.teams},
        {t: snap.usage[t][0] for t in snap.teams},
        {t for t in snap.teams if snap.open.get(t)},
    )
    return {t: (v["share"] / v["target"] if v["target"] > 0 else 0.0) for t, v in rows.items()}


def _priority(score: float) -> int:
    """The priority a waiting score encodes (job_model.waiting_score)."""
    return 9 - int(score // 1e10)


def jobs_ahead(registry: Registry, team: str, priority: int, queue: str) -> int:
    """How many waiting jobs on `queue` would be sent before a new job of `team` at `priority`,
    under the current usage, in the order `schedule` sends them (team slots aside)."""
    snap = schedule_snapshot.read(registry, look_ahead=-1, head_fields=("queue",))
    assert snap is not None  # None only when asked to take the lock
    lines = snap.lines.get(queue, {})
    new = (waiting_score(priority, time.time()), "")
    lines[team] = sorted([*lines.get(team, []), new])
    if team not in snap.quotas:
        snap.quotas[team] = registry.teams.quota(team)  # a team never seen: its quota is the default
    turns = Turns(lines, Ranking.of(snap, lines))
    ahead = 0
    while (next_team := turns.next()) is not None:
        if turns.served(next_team) == new:
            return ahead
        ahead += 1
    return ahead
