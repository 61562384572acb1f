"""Live requests (steer, chat, label search) in Redis: per-team admission (concurrency and rate),
per-team queues that the `steer` workers serve round-robin, and the cancel flag the API sets when it
gives up on a request. No torch: the API and the workers both use it."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from saeq.errors import Cancelled
from saeq.platform import redis_keys
from saeq.platform.teams import TeamQuota

MAX_CHARS_PER_TOKEN = 16
"""The API's bound without a tokenizer: a prompt of more than `live_prompt_tokens` x this many
characters is refused at once. Text averages 2-5 characters per token with every tokenizer
saeq loads (English ~4.5 with SmolLM2's, code ~3); only degenerate text (long runs of one
character) averages more, and the worker still counts the exact tokens of whatever passes."""

CANCEL_TTL_S = 600
"""How long a cancel flag outlives its request (longer than any request waits in a queue)."""
DEADLINE_GRACE_S = 5.0
"""A worker drops a request this long after the API's deadline even with no cancel flag (the API
died): room for clocks that differ a little between hosts."""


# The keys live in saeq.platform.redis_keys; these names are what this module and the API use.
slots_key = redis_keys.live_slots
rate_key = redis_keys.live_rate
queue_key = redis_keys.live_queue
TURNS_KEY = redis_keys.LIVE_TURNS
TURN_KEY = redis_keys.LIVE_TURN
OUTCOMES_KEY = redis_keys.LIVE_OUTCOMES
cancel_key = redis_keys.live_cancel
reply_key = redis_keys.live_reply


REPLY_TTL_S = 300


# Both limits at once, or neither: a refused request takes no slot and no place in the rate window.
# The time is Redis's, so API replicas with skewed clocks share one window.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local concurrency, per_minute, hold = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)  -- holds of an API that died
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 60)
if redis.call('ZCARD', KEYS[1]) >= concurrency then
  return {'live_concurrency', '1'}
end
if redis.call('ZCARD', KEYS[2]) >= per_minute then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')[2]
  return {'live_per_minute', tostring(oldest and (tonumber(oldest) + 60 - now) or 60)}
end
redis.call('ZADD', KEYS[1], now + hold, ARGV[1])
redis.call('EXPIRE', KEYS[1], math.ceil(hold) + 1)
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('EXPIRE', KEYS[2], 61)
return {'', '0'}
"""

# A team that starts waiting is scored just below the team served last, so it goes ahead of any
# team that was just served (however many that one queued) but behind teams that have waited
# longer. Teams joining in the same turn tie and go in name order.
_ENQUEUE = """
redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
local turn = tonumber(redis.call('GET', KEYS[3]) or '0')
redis.call('ZADD', KEYS[2], 'NX', turn - 0.5, ARGV[1])
"""

# The least recently served team gives its oldest request and, if it has more, is scored with the
# next turn: each team with waiting requests gets one in turn, however many it queued.
_NEXT = """
for _ = 1, redis.call('ZCARD', KEYS[1]) do
  local team = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
  if not team then return false end
  local queue = ARGV[1] .. team
  local entry = redis.call('LPOP', queue)
  if redis.call('LLEN', queue) > 0 then
    redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[2]), team)
  else
    redis.call('ZREM', KEYS[1], team)
  end
  if entry then return entry end
end
return false
"""


@dataclass(frozen=True)
class Refusal:
    limit: str
    """The quota field that refused it: `live_concurrency` or `live_per_minute`."""
    retry_after_s: int


class LiveRequests:
    """The Redis side of live requests, for the API (admit, enqueue, cancel, release) and the
    workers (next, cancelled, record)."""

    def __init__(self, client: redis.Redis):
        self.r = client
        self._admit = client.register_script(_ADMIT)
        self._enqueue = client.register_script(_ENQUEUE)
        self._next = client.register_script(_NEXT)

    # ---- the API -------------------------------------------------------------------------------

    def admit(self, team: str, request_id: str, quota: TeamQuota, *, hold_s: float) -> Refusal | None:
        """Take one of the team's `live_concurrency` slots (until `release`, or `hold_s` if the API
        dies first) and a place among its `live_per_minute`; None when admitted."""
        limit, retry = self._admit(
            keys=[slots_key(team), rate_key(team)],
            args=[request_id, quota.live_concurrency, quota.live_per_minute, hold_s],
        )
        if not limit:
            return None
        return Refusal(limit if isinstance(limit, str) else limit.decode(), max(1, math.ceil(float(retry))))

    def release(self, team: str, request_id: str) -> None:
        """Free the request's slot: the API on an answer or a withdrawal, else the worker that took
        it, when it answers, stops or skips it (whoever finishes last)."""
        self.r.zrem(slots_key(team), request_id)

    def enqueue(self, team: str, entry: dict[str, Any], *, ttl_s: float) -> str:
        """Queue a request for the workers; returns the stored entry (for `withdraw`)."""
        raw = json.dumps(entry)
        self._enqueue(keys=[queue_key(team), TURNS_KEY, TURN_KEY], args=[team, raw, math.ceil(ttl_s)])
        return raw

    def cancel(self, team: str, request_id: str, raw_entry: str, op: str) -> bool:
        """The API gave up (504, or its client left): take the request out of its queue if no worker
        has it yet (True: the caller frees its slot), else flag it so the worker stops before its
        next load phase or token, and frees the slot then (False)."""
        pipe = self.r.pipeline()
        pipe.set(cancel_key(request_id), "1", ex=CANCEL_TTL_S)
        pipe.lrem(queue_key(team), 1, raw_entry)
        if pipe.execute()[1]:
            self.record(op, "withdrawn")
            return True
        return False

    # ---- the workers ---------------------------------------------------------------------------

    def next_request(self) -> dict[str, Any] | None:
        """The fairest waiting request: the oldest of the next team in turn. The worker that takes
        one holds its slot from then on: `hold` while it computes, `release` when it lets go."""
        raw = self._next(keys=[TURNS_KEY, TURN_KEY], args=[queue_key("")])
        if not raw:
            return None
        entry = json.loads(raw)
        self.hold(entry)
        return entry

    def hold(self, entry: dict[str, Any]) -> None:
        """Keep the slot of a request this worker computes for another `hold_s` (the API's first
        hold may run out during a long load); a worker that dies stops renewing it."""
        hold_s = entry.get("hold_s")
        if hold_s is None:
            return
        pipe = self.r.pipeline()
        pipe.zadd(slots_key(entry["team"]), {entry["id"]: time.time() + hold_s}, xx=True)
        pipe.expire(slots_key(entry["team"]), math.ceil(hold_s) + 1)
        pipe.execute()

    def cancelled(self, entry: dict[str, Any]) -> bool:
        """The API gave up on it, or its deadline passed (an API that died sets no flag)."""
        return time.time() > entry["deadline"] + DEADLINE_GRACE_S or bool(self.r.exists(cancel_key(entry["id"])))

    def check_for(self, entry: dict[str, Any], every_s: float = 0.2) -> Callable[[], None]:
        """A callback for before each load phase and between tokens: raises Cancelled once the
        request is cancelled, else renews its slot's hold; asks Redis at most every `every_s`, so a
        token costs no round trip."""
        asked = -math.inf

        def check() -> None:
            nonlocal asked
            if time.monotonic() - asked >= every_s:
                asked = time.monotonic()
                if self.cancelled(entry):
                    raise Cancelled("the caller of this live request gave up (timeout or disconnect)")
                self.hold(entry)

        return check

    def answer(self, entry: dict[str, Any], reply: dict[str, Any], outcome: str) -> None:
        """The reply for the API, counted in the same step (a caller never sees an uncounted one)."""
        pipe = self.r.pipeline()
        pipe.hincrby(OUTCOMES_KEY, f"{entry['op']}|{outcome}", 1)
        pipe.rpush(reply_key(entry["id"]), json.dumps(reply))
        pipe.expire(reply_key(entry["id"]), REPLY_TTL_S)
        pipe.execute()

    def record(self, op: str, outcome: str) -> None:
        self.r.hincrby(OUTCOMES_KEY, f"{op}|{outcome}", 1)

    def outcomes(self) -> dict[str, int]:
        return {(k if isinstance(k, str) else k.decode()): int(v) for k, v in self.r.hgetall(OUTCOMES_KEY).items()}


def prompt_chars(payload: dict[str, Any]) -> tuple[str, int]:
    """(field, characters) of a live steer request's prompt: `prompt`, or the `messages` summed."""
    if payload.get("messages") is not None:
        return "messages", sum(len(m["content"]) for m in payload["messages"])
    return "prompt", len(payload.get("prompt") or "")
