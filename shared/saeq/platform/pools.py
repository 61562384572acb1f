"""Worker pools: what each live worker advertises (device, memory per device, device count, job
slots, per queue), kept in Redis with a TTL the worker renews (saeq_worker.pools).

The scheduler gates dispatch on `capacity` and the API refuses at submit a job whose memory
estimate no pool can hold (`largest_memory`). Expiry uses Redis's own clock (TIME in the scripts),
so a worker's and a reader's clocks need not agree. Each read is one round trip (one script).
"""

from __future__ import annotations

import json
from typing import cast

import redis

from saeq.platform import redis_keys
from saeq.specs.scheduling import WorkerAd

_ADVERTISE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], t + tonumber(ARGV[3]), ARGV[1])
return 1
"""

# A Lua function: drops the expired ads, then returns the live ones. The scheduler's snapshot
# script (saeq.platform.schedule_snapshot) defines it too, so both read the ads the same way.
# unpack() takes a few thousand values at most: far more workers than a deployment has.
LIVE_ADS_FUNCTION = """
local function live_ads(ads_key, expiry_key)
  local now = redis.call('TIME')
  local t = tonumber(now[1]) + tonumber(now[2]) / 1000000
  local gone = redis.call('ZRANGEBYSCORE', expiry_key, '-inf', t)
  if #gone > 0 then
    redis.call('ZREMRANGEBYSCORE', expiry_key, '-inf', t)
    redis.call('HDEL', ads_key, unpack(gone))
  end
  local live = redis.call('ZRANGE', expiry_key, 0, -1)
  if #live == 0 then return {} end
  return redis.call('HMGET', ads_key, unpack(live))
end
"""

_LIVE = LIVE_ADS_FUNCTION + "return live_ads(KEYS[1], KEYS[2])\n"


def _field(worker: str, queue: str) -> str:
    # A worker consuming several queues advertises once per queue: each counts its slots.
    return f"{worker}/{queue}"


def advertise(r: redis.Redis, ad: WorkerAd, ttl_s: float) -> None:
    """Publish (or renew) `ad` for `ttl_s` seconds; it stops counting once it expires unrenewed."""
    if ttl_s <= 0:
        raise ValueError(f"ttl_s must be positive, not {ttl_s}")
    r.register_script(_ADVERTISE)(
        keys=[redis_keys.POOL_ADS, redis_keys.POOL_EXPIRY],
        args=[_field(ad.worker, ad.queue), ad.model_dump_json(), ttl_s],
    )


def withdraw(r: redis.Redis, worker: str, queue: str) -> None:
    """Remove a worker's ad for `queue` at once (its shutdown), instead of waiting out the TTL."""
    field = _field(worker, queue)
    pipe = r.pipeline(transaction=True)
    pipe.hdel(redis_keys.POOL_ADS, field)
    pipe.zrem(redis_keys.POOL_EXPIRY, field)
    pipe.execute()


def live_workers(r: redis.Redis) -> list[WorkerAd]:
    """Every unexpired ad, of every queue."""
    raw = cast(list[str | None], r.register_script(_LIVE)(keys=[redis_keys.POOL_ADS, redis_keys.POOL_EXPIRY]))
    # None: an expiry entry without its ad (both are written together; only a hand edit splits them).
    return [WorkerAd.model_validate(json.loads(value)) for value in raw if value is not None]


def capacity(r: redis.Redis, queue: str) -> int | None:
    """Job slots of the live workers on `queue`, summed; None when no worker advertises it (then
    dispatch is not gated: a deployment or a test without advertising workers works as before)."""
    slots = [ad.slots for ad in live_workers(r) if ad.queue == queue]
    return sum(slots) if slots else None


def largest_memory(r: redis.Redis, queue: str) -> int | None:
    """Memory of one device of the biggest live worker on `queue`, bytes; None when none advertises."""
    memory = [ad.memory_bytes for ad in live_workers(r) if ad.queue == queue]
    return max(memory) if memory else None
