"""Who runs which slice of a split harvest, how far each got, and which failed, in Redis.

A slice is owned through a key with a TTL its runner renews (as a job's lease): a runner that dies
lets go within the TTL and the slice can be taken again. Done-ness is not kept here: a slice is
done when its slice manifest is in the store, which survives Redis.
"""

from __future__ import annotations

import json
import secrets
from typing import Any, cast

import redis

from saeq.platform import redis_keys

KEEP_S = 7 * 24 * 3600
"""How long the progress and errors of a split harvest stay (a job's record outlives this rarely)."""

# Renew only while the key still holds our token: a runner presumed dead must not extend another's.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class SliceBoard:
    """The slices of one split harvest job."""

    def __init__(self, r: redis.Redis, job_id: str, *, ttl_s: float):
        self.r, self.job_id, self.ttl_ms = r, job_id, int(ttl_s * 1000)
        self._hash = redis_keys.harvest_slices(job_id)

    def claim(self, index: int) -> str | None:
        """A token if this caller now owns slice `index`, None while another runner does."""
        token = secrets.token_hex(8)
        ok = self.r.set(redis_keys.harvest_slice_owner(self.job_id, index), token, nx=True, px=self.ttl_ms)
        return token if ok else None

    def renew(self, index: int, token: str) -> bool:
        """Extend the claim; False once it was lost (expired and maybe taken by another runner)."""
        key = redis_keys.harvest_slice_owner(self.job_id, index)
        return bool(self.r.eval(_RENEW, 1, key, token, str(self.ttl_ms)))

    def release(self, index: int, token: str) -> None:
        self.r.eval(_RELEASE, 1, redis_keys.harvest_slice_owner(self.job_id, index), token)

    def set_tokens(self, index: int, tokens: int) -> None:
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(self._hash, f"tokens:{index}", str(tokens))
        pipe.expire(self._hash, KEEP_S)
        pipe.execute()

    def tokens(self) -> int:
        """Tokens harvested so far over every slice (counting shards an earlier attempt wrote)."""
        fields = cast(dict[str, str], self.r.hgetall(self._hash))
        return sum(int(v) for k, v in fields.items() if k.startswith("tokens:"))

    def fail(self, index: int, error: dict[str, Any]) -> None:
        """Record why slice `index` failed (`code`, `message`, `field`): the job fails with it."""
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(self._hash, f"error:{index}", json.dumps(error))
        pipe.expire(self._hash, KEEP_S)
        pipe.execute()

    def errors(self) -> dict[int, dict[str, Any]]:
        fields = cast(dict[str, str], self.r.hgetall(self._hash))
        return {int(k.split(":")[1]): json.loads(v) for k, v in fields.items() if k.startswith("error:")}

    def clear_errors(self) -> None:
        """Forget the failures of an earlier attempt: a retried job gives its slices a new chance."""
        fields = cast(list[str], self.r.hkeys(self._hash))
        if stale := [k for k in fields if k.startswith("error:")]:
            self.r.hdel(self._hash, *stale)
