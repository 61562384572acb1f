"""Fair-share accounting: each team's device-seconds in Redis, decayed exponentially (usage a
half-life old counts half, as Slurm's PriorityDecayHalfLife), and each team's share of all usage
against its target (its weight over the active teams' weights). The scheduler orders teams by it.

Usage is stored as (value, as of when): reading or adding decays it to now first, so no periodic
job is needed. The worker's heartbeat thread adds elapsed seconds x the job's devices.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, cast

import redis

from saeq.platform import redis_keys

if TYPE_CHECKING:
    from saeq.platform.registry import Registry

DEFAULT_HALF_LIFE_S = 24 * 3600.0


@dataclass(frozen=True)
class SchedulingPolicy:
    """The deployment's scheduling settings (saeq.platform.settings), as published in Redis."""

    half_life_s: float = DEFAULT_HALF_LIFE_S
    """Usage this old counts half."""
    min_run_s: float = 600.0
    """A job runs this long since its last (re)start before it may be preempted."""
    max_preemptions: int = 5
    """A job preempted this many times runs to its end."""


def publish_policy(r: redis.Redis, policy: SchedulingPolicy) -> None:
    """Written by the API at start, so every process decays and preempts alike."""
    r.set(redis_keys.SCHEDULING_POLICY, json.dumps(asdict(policy)))


def read_policy(r: redis.Redis) -> SchedulingPolicy:
    raw = cast(str | None, r.get(redis_keys.SCHEDULING_POLICY))
    return SchedulingPolicy(**json.loads(raw)) if raw else SchedulingPolicy()


# KEYS: the team's usage hash. ARGV: seconds to add, now, half-life.
_ADD = """
local now, half_life = tonumber(ARGV[2]), tonumber(ARGV[3])
local s = tonumber(redis.call('hget', KEYS[1], 's') or '0')
local at = tonumber(redis.call('hget', KEYS[1], 'at') or ARGV[2])
if now > at then s = s * math.pow(2, -(now - at) / half_life) else now = at end
s = s + tonumber(ARGV[1])
-- tostring keeps 14 digits: a Unix time would lose its milliseconds
redis.call('hset', KEYS[1], 's', string.format('%.17g', s), 'at', string.format('%.6f', now))
return string.format('%.17g', s)
"""

ATTEMPT_WEIGHT = 0.2
"""Each attempt's weight in the team's average attempt (an exponential average, ~the last 9).
At 0.5 one slow attempt on a loaded node doubled the estimate, and the team's next turn moved
by an attempt divided by its weight: the fair-share stack test saw 1:3 drift by 15%."""

# KEYS: the team's usage hash. ARGV: one attempt's device-seconds, its weight.
_RECORD_ATTEMPT = """
local old = redis.call('hget', KEYS[1], 'job_s')
local new = tonumber(ARGV[1])
if old then new = (1 - tonumber(ARGV[2])) * tonumber(old) + tonumber(ARGV[2]) * new end
redis.call('hset', KEYS[1], 'job_s', string.format('%.17g', new))
return string.format('%.17g', new)
"""


def _decayed(s: float, at: float, now: float, half_life_s: float) -> float:
    return s * 2.0 ** (-max(0.0, now - at) / half_life_s)


def add_usage(
    r: redis.Redis, team: str, seconds: float, *, now: float | None = None, half_life_s: float | None = None
) -> float:
    """Add `seconds` (device-seconds) to the team's decayed usage; returns it."""
    half_life = half_life_s if half_life_s is not None else read_policy(r).half_life_s
    when = time.time() if now is None else now
    return float(cast(str, r.eval(_ADD, 1, redis_keys.team_usage(team), seconds, when, half_life)))


def record_attempt(r: redis.Redis, team: str, seconds: float) -> None:
    """One attempt of a team's job ended after using `seconds` device-seconds: the running
    average the scheduler takes as the cost of the team's next job."""
    r.eval(_RECORD_ATTEMPT, 1, redis_keys.team_usage(team), seconds, ATTEMPT_WEIGHT)


def usage_s(r: redis.Redis, team: str, *, now: float | None = None, half_life_s: float | None = None) -> float:
    """The team's device-seconds, decayed to now."""
    return usages(r, [team], now=now, half_life_s=half_life_s)[team][0]


def usages(
    r: redis.Redis, teams: Iterable[str], *, now: float | None = None, half_life_s: float | None = None
) -> dict[str, tuple[float, float]]:
    """team -> (decayed usage_s, average attempt's device-seconds), in one round trip."""
    names = list(teams)
    half_life = half_life_s if half_life_s is not None else read_policy(r).half_life_s
    when = time.time() if now is None else now
    pipe = r.pipeline(transaction=False)
    for team in names:
        pipe.hmget(redis_keys.team_usage(team), "s", "at", "job_s")
    rows = pipe.execute() if names else []
    return {
        team: usage_of(s, at, job_s, now=when, half_life_s=half_life)
        for team, (s, at, job_s) in zip(names, rows, strict=True)
    }


def usage_of(
    s: str | None, at: str | None, job_s: str | None, *, now: float, half_life_s: float
) -> tuple[float, float]:
    """A team's usage hash fields as stored -> (decayed usage_s at `now`, average attempt's
    device-seconds)."""
    used = _decayed(float(s), float(at), now, half_life_s) if s is not None and at is not None else 0.0
    return used, float(job_s) if job_s is not None else 0.0


def active_teams(registry: Registry, teams: list[str] | None = None) -> list[str]:
    """Teams with a job not ended (waiting, sent or running): the ones a target is shared among."""
    teams = teams if teams is not None else sorted({*registry.teams.teams(), "default"})
    pipe = registry.r.pipeline(transaction=False)
    for team in teams:
        pipe.scard(redis_keys.team(team, "open"))
    return [team for team, n in zip(teams, pipe.execute(), strict=True) if n]


def shares(registry: Registry, *, half_life_s: float | None = None) -> dict[str, dict]:
    """Every team's weight, decayed usage_s, share (its fraction of all teams' usage; 0 while
    nobody used anything) and target (its weight over the sum of the active teams' weights; 0 for
    a team with no job open), and `active`."""
    teams = sorted({*registry.teams.teams(), "default"})
    active = set(active_teams(registry, teams))
    used = {team: u for team, (u, _) in usages(registry.r, teams, half_life_s=half_life_s).items()}
    return shares_of({team: registry.teams.quota(team).share_weight for team in teams}, used, active)


def shares_of(weights: dict[str, float], used: dict[str, float], active: set[str]) -> dict[str, dict]:
    """`shares` from each team's weight, decayed usage_s and whether it is active."""
    total_used = sum(used.values())
    total_weight = sum(weights[t] for t in active)
    return {
        team: {
            "weight": weights[team],
            "usage_s": used[team],
            "share": used[team] / total_used if total_used > 0 else 0.0,
            "target": weights[team] / total_weight if team in active and total_weight > 0 else 0.0,
            "active": team in active,
        }
        for team in weights
    }


class UsageClock:
    """Adds a running attempt's device-seconds (wall seconds x its devices) to its team as they
    pass: `tick` at each heartbeat, `close` at the end (the rest, and the attempt's total for the
    team's average). Seconds Redis did not take are added at the next tick."""

    def __init__(self, r: redis.Redis, team: str, devices: int):
        self.r, self.team, self.devices = r, team, devices
        self._counted_until = time.monotonic()
        self.total_s = 0.0

    def tick(self) -> None:
        now = time.monotonic()
        seconds = (now - self._counted_until) * self.devices
        add_usage(self.r, self.team, seconds)  # raises on a Redis error: nothing counted, retried
        self._counted_until = now
        self.total_s += seconds

    def close(self) -> None:
        self.tick()
        record_attempt(self.r, self.team, self.total_s)
