"""What one scheduling pass reads, in one Redis round trip: a Lua script takes the pass's lock
and returns every team's waiting heads (with the fields a dispatch needs), usage, quota and job
counts, the policy, the live worker ads (pools.LIVE_ADS_FUNCTION), and each queue's dispatched
jobs with what the capacity and preemption checks read; a second script frees the lock, asking
the pass's preemptions on the way (`release`). Reading these one by one cost a pass ~20 round
trips, the bulk of a dispatch decision on a loaded node (docs/benchmarks.md, the scheduler section).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import redis

from saeq.platform import lua_scripts, pools, redis_keys
from saeq.platform.fair_share import SchedulingPolicy, usage_of
from saeq.platform.job_model import decode
from saeq.platform.job_preempt import preempt_request_args
from saeq.platform.teams import TeamQuota
from saeq.specs.scheduling import WorkerAd
from saeq.specs.states import TERMINAL

if TYPE_CHECKING:
    from saeq.platform.registry import Registry

SUMMARY = ("queue", "id", "kind", "team", "priority", "created_at", "state", "dispatched")
"""A waiting head's fields: what `send` and the dispatch script take (its queue first: a
snapshot for jobs_ahead reads only that)."""
MEMBER = ("id", "team", "priority", "state", "started_at", "last_started_at", "preemptions", "preempt", "dispatched")
"""A dispatched job's fields: what the capacity count and the preemption rules read."""
_STATE, _PREEMPT, _DISPATCHED, _RUNNING = (
    MEMBER.index("state"),
    MEMBER.index("preempt"),
    MEMBER.index("dispatched"),
    len(MEMBER),
)

_SENTINEL = "\x00"  # never in a team or queue name (TEAM_PATTERN; queues are ours)


def _template(key: str) -> tuple[str, str]:
    """A redis_keys function's key around its variable part, for the script to build keys with."""
    before, after = key.split(_SENTINEL)
    return before, after


# KEYS: 1 the lock, 2 the run-again flag, 3 the policy, 4 the default quota, 5 every team's name,
#   6 the pool ads, 7 their expiry, 8 the running set.
# ARGV: 1 lock token ('': read without the lock), 2 lock TTL ms, 3 last waiting index per team
#   (-1: all), 4 record key prefix, 5-14 (before, after) of a team's waiting, active, open, usage
#   and quota keys, 15-16 of a queue's dispatched set, 17 how many SUMMARY fields, then SUMMARY,
#   then MEMBER.
# Returns false when another pass holds the lock (the flag asks it to run again), else
# {policy, default quota, {team, {id, score, ...}, its first head's summary, {queue per head},
# {s, at, job_s}, quota, n active, n open}..., {live ads}, {queue, {member}, {fields + running
# flag per member}}...}. Only the first head's summary: a pass mostly sends one job per team,
# and reading every head's would double the script's time.
_READ = (
    pools.LIVE_ADS_FUNCTION
    + """
if ARGV[1] ~= '' then
  if not redis.call('set', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
    redis.call('set', KEYS[2], '1', 'PX', ARGV[2])
    return false
  end
  redis.call('del', KEYS[2])
end
local function key(i, name) return ARGV[i] .. name .. ARGV[i + 1] end
local n_summary = tonumber(ARGV[17])
local summary, member = {}, {}
for i = 18, 17 + n_summary do summary[#summary + 1] = ARGV[i] end
for i = 18 + n_summary, #ARGV do member[#member + 1] = ARGV[i] end
local teams = redis.call('smembers', KEYS[5])
local has_default = false
for _, t in ipairs(teams) do if t == 'default' then has_default = true end end
if not has_default then teams[#teams + 1] = 'default' end
local per_team, queues, seen = {}, {}, {}
for i, t in ipairs(teams) do
  local heads = redis.call('zrange', key(5, t), 0, tonumber(ARGV[3]), 'WITHSCORES')
  local first, of = false, {}
  for j = 1, #heads, 2 do
    local q
    if j == 1 then
      first = redis.call('hmget', ARGV[4] .. heads[j], unpack(summary))
      q = first[1]
    else
      q = redis.call('hget', ARGV[4] .. heads[j], 'queue')
    end
    of[#of + 1] = q
    if q and not seen[q] then seen[q] = true; queues[#queues + 1] = q end
  end
  per_team[i] = {t, heads, first, of, redis.call('hmget', key(11, t), 's', 'at', 'job_s'),
    redis.call('get', key(13, t)), redis.call('scard', key(7, t)), redis.call('scard', key(9, t))}
end
local ads = live_ads(KEYS[6], KEYS[7])
local per_queue = {}
for i, q in ipairs(queues) do
  local members = redis.call('smembers', ARGV[15] .. cjson.decode(q) .. ARGV[16])
  local rows = {}
  for j, id in ipairs(members) do
    local row = redis.call('hmget', ARGV[4] .. id, unpack(member))
    row[#row + 1] = redis.call('sismember', KEYS[8], id)
    rows[j] = row
  end
  per_queue[i] = {q, members, rows}
end
return {redis.call('get', KEYS[3]), redis.call('get', KEYS[4]), per_team, ads, per_queue}
"""
)

# KEYS: 1 the lock, 2 the run-again flag, then per preemption request the job's record and events.
# ARGV: 1 the lock's token, then per request the reason and the event entry (JSON).
# The pass's preemption requests go with the lock's release: one round trip for both. They are
# set only while the lock is still ours: one that expired under a slow pass may have let another
# pass decide on the same jobs; then nothing is asked and the caller runs again (it decides anew).
# Returns {1 if asked to run again, else 0; per request 1 (asked) or 0}.
_RELEASE = (
    lua_scripts.REQUEST_PREEMPT_FUNCTION
    + """
local again = redis.call('exists', KEYS[2])
local asked = {}
if redis.call('get', KEYS[1]) == ARGV[1] then
  for i = 3, #KEYS, 2 do asked[#asked + 1] = request_preempt(KEYS[i], KEYS[i + 1], ARGV[i - 1], ARGV[i]) end
  redis.call('del', KEYS[1])
elseif #KEYS > 2 then
  again = 1
end
return {again, asked}
"""
)

_parsed: dict[str, Any] = {}
"""Raw JSON (a quota, an ad, the policy) -> its model: each changes seldom, parsing costs ~10 us."""


def _parse(raw: str, model: Any) -> Any:
    if (hit := _parsed.get(raw)) is None:
        if len(_parsed) > 10_000:
            _parsed.clear()
        hit = _parsed[raw] = model(raw)
    return hit


Lines = dict[str, list[tuple[float, str]]]
"""team -> its waiting jobs on one queue, best first, as (waiting score, job id)."""


@dataclass
class Snapshot:
    """One pass's view of the scheduling state, as of one instant."""

    policy: SchedulingPolicy
    teams: list[str]
    """Every team's name, with "default": the ones fair share is computed over."""
    lines: dict[str, Lines]
    """queue -> team -> waiting heads, in the order of the teams (sorted), then of their lines."""
    heads: dict[str, list[Any]]
    """job id -> its SUMMARY fields as stored (JSON), for each team's first head."""
    usage: dict[str, tuple[float, float]]
    """team -> (decayed usage_s now, average attempt's device-seconds)."""
    quotas: dict[str, TeamQuota]
    active: dict[str, int]
    """team -> its jobs dispatched and not ended (its slots in use)."""
    open: dict[str, int]
    """team -> its jobs not ended (a team with one is active for its target share)."""
    capacity: dict[str, int]
    """queue -> the live workers' slots on it (a queue no worker advertises is absent)."""
    members: dict[str, list[tuple[str, list[Any]]]]
    """queue -> (job id, MEMBER fields as stored + the running flag) of its dispatched set."""

    def head(self, r: redis.Redis, job_id: str) -> dict[str, Any]:
        """A waiting head's record summary, decoded (read now unless it is a team's first)."""
        row = self.heads.get(job_id) or cast(list[Any], r.hmget(redis_keys.job(job_id), *SUMMARY))
        return decode({f: v for f, v in zip(SUMMARY, row, strict=True) if v is not None})

    def stale(self, queue: str) -> list[str]:
        """Members of the queue's dispatched set that left it by a path that did not say so (a
        record expired, a requeue by an older process): not running, and gone, queued and not
        sent, or ended."""
        out = []
        for job_id, row in self.members.get(queue, []):
            state, dispatched, running = row[_STATE], row[_DISPATCHED], row[_RUNNING]
            if not running and (state is None or (state == '"queued"' and dispatched != "true") or _ended(state)):
                out.append(job_id)
        return out

    def dispatched_rows(self, queue: str, stale: list[str]) -> list[list[Any]]:
        """The queue's dispatched jobs but `stale` and those whose record is gone, as MEMBER rows
        as stored: `job` decodes one (the preemption check decodes only possible victims)."""
        skip = set(stale)
        return [row for job_id, row in self.members.get(queue, []) if job_id not in skip and row[0] is not None]


def job(row: list[Any]) -> dict[str, Any]:
    """A MEMBER row decoded, its team "default" when it has none."""
    out = decode({f: v for f, v in zip(MEMBER, row, strict=False) if v is not None})
    return {**out, "team": out.get("team") or "default"}


def asked_to_yield(row: list[Any]) -> bool:
    """A MEMBER row's `preempt` is set (a JSON reason, truthy). A non-empty JSON string is truthy
    without parsing it: the reasons are long and every pass reads them all."""
    raw = row[_PREEMPT]
    if raw is None:
        return False
    return (raw.startswith('"') and len(raw) > 2) or bool(json.loads(raw))


def running(row: list[Any]) -> bool:
    """A MEMBER row's state is running (values are stored as JSON)."""
    return row[_STATE] == '"running"'


def _ended(state: str) -> bool:
    return json.loads(state) in TERMINAL


def read(
    registry: Registry,
    *,
    lock_token: str = "",
    lock_ttl_ms: int = 10_000,
    look_ahead: int = 16,
    head_fields: tuple[str, ...] = SUMMARY,
) -> Snapshot | None:
    """The snapshot; with a `lock_token`, taken under the scheduling lock (held until `release`),
    or None (and the holder asked to run again) when another pass holds it. `look_ahead`: waiting
    heads read per team (-1: all). `head_fields`: SUMMARY, or its first fields only (then `head`
    reads every head)."""
    r = registry.r
    raw = cast(
        list[Any] | None,
        _script(r, _READ)(
            keys=[
                redis_keys.lock("schedule"),
                redis_keys.SCHEDULE_AGAIN,
                redis_keys.SCHEDULING_POLICY,
                redis_keys.DEFAULT_QUOTA,
                redis_keys.TEAMS,
                redis_keys.POOL_ADS,
                redis_keys.POOL_EXPIRY,
                redis_keys.RUNNING,
            ],
            args=[
                lock_token,
                lock_ttl_ms,
                look_ahead - 1 if look_ahead > 0 else -1,
                redis_keys.JOB_PREFIX,
                *(
                    part
                    for what in ("waiting", "active", "open")
                    for part in _template(redis_keys.team(_SENTINEL, what))
                ),
                *_template(redis_keys.team_usage(_SENTINEL)),
                *_template(redis_keys.team_quota(_SENTINEL)),
                *_template(redis_keys.queue_dispatched(_SENTINEL)),
                len(head_fields),
                *head_fields,
                *MEMBER,
            ],
        ),
    )
    if raw is None:
        return None
    policy_raw, default_raw, per_team, ads, per_queue = raw
    policy = _parse(policy_raw, lambda s: SchedulingPolicy(**json.loads(s))) if policy_raw else SchedulingPolicy()
    now = time.time()
    snap = Snapshot(policy, [], {}, {}, {}, {}, {}, {}, {}, {})
    for team, flat, first, queues, (s, at, job_s), quota_raw, n_active, n_open in sorted(per_team, key=lambda x: x[0]):
        snap.teams.append(team)
        snap.usage[team] = usage_of(s, at, job_s, now=now, half_life_s=policy.half_life_s)
        quota = quota_raw or default_raw
        snap.quotas[team] = _parse(quota, TeamQuota.model_validate_json) if quota else TeamQuota()
        snap.active[team], snap.open[team] = int(n_active), int(n_open)
        if first and len(first) == len(SUMMARY):
            snap.heads[flat[0]] = first
        line_on: dict[str, list[tuple[float, str]]] = {}  # raw queue -> this team's line there
        for job_id, score, queue_raw in zip(flat[::2], flat[1::2], queues, strict=True):
            if queue_raw is None:
                continue  # its record is gone
            if (line := line_on.get(queue_raw)) is None:
                line = line_on[queue_raw] = snap.lines.setdefault(_parse(queue_raw, json.loads), {}).setdefault(
                    team, []
                )
            line.append((float(score), job_id))
    for ad_raw in ads:
        if ad_raw is not None:  # an expiry entry without its ad: only a hand edit splits them
            ad = _parse(ad_raw, WorkerAd.model_validate_json)
            snap.capacity[ad.queue] = snap.capacity.get(ad.queue, 0) + ad.slots
    for queue_raw, ids, rows in per_queue:
        snap.members[_parse(queue_raw, json.loads)] = list(zip(ids, rows, strict=True))
    return snap


def release(registry: Registry, lock_token: str, preempt: list[tuple[str, str]] | None = None) -> bool:
    """Let go of the lock taken by `read`, first asking the (job id, reason) of `preempt` to yield
    (job_preempt.request_preempt's checks, in the same script). True when another caller asked for
    one more pass, or the lock was no longer ours and `preempt` was not empty (nothing asked)."""
    again, _ = release_asking(registry, lock_token, preempt or [])
    return again


def release_asking(registry: Registry, lock_token: str, preempt: list[tuple[str, str]]) -> tuple[bool, list[str]]:
    """`release`, also returning the ids of `preempt` that were asked."""
    keys, args = preempt_request_args(preempt)
    again, flags = cast(
        list[Any],
        _script(registry.r, _RELEASE)(
            keys=[redis_keys.lock("schedule"), redis_keys.SCHEDULE_AGAIN, *keys], args=[lock_token, *args]
        ),
    )
    return bool(again), [job_id for (job_id, _), ok in zip(preempt, flags, strict=False) if ok]


def _script(r: redis.Redis, source: str) -> Any:
    return r.register_script(source)  # hashes the source (microseconds); EVALSHA, loaded on NOSCRIPT
