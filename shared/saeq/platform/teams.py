"""Teams, their API keys and their quotas, stored in Redis beside the job records.

A key is `saeq_{key_id}_{secret}`: the key id finds the record, and only a SHA-256 of the whole
key is stored. The secret holds 256 random bits, so a fast hash is as safe as a slow one here (no
dictionary to try) and costs microseconds on every request. A key's plain text exists only in the
answer that created it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Literal, cast

import redis

from saeq.platform import redis_keys
from saeq.specs.api_keys import new_key  # the key's shape is shared with the client
from saeq.specs.quotas import TeamQuota  # a contract: saeq.specs.costs reads it without Redis

TEAM_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_TEAM = re.compile(TEAM_PATTERN)
_KEY = re.compile(r"^saeq_([0-9a-f]{16})_[A-Za-z0-9_-]{43}$")
Role = Literal["member", "admin"]


@dataclass(frozen=True)
class Principal:
    """Who is calling: a team and a role (an admin sees and manages every team)."""

    team: str
    role: Role
    key_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def sees(self, job: dict) -> bool:
        return self.is_admin or job.get("team") == self.team


def valid_team(team: str) -> str:
    if not _TEAM.match(team):
        raise ValueError(f"team {team!r} must match {TEAM_PATTERN}")
    return team


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Teams:
    """Keys and quotas in Redis. Job counts per team live in the registry's sets."""

    QUOTA_TTL_S = 5.0
    """A quota is read at most this often per process (every submit and dispatch needs it); a
    change takes effect within this long, at once in the process that made it."""

    def __init__(self, client: redis.Redis):
        self.r = client
        self._quotas: dict[str, tuple[float, TeamQuota]] = {}

    # ---- keys --------------------------------------------------------------------------------

    def create_key(self, team: str, role: Role = "member", name: str = "") -> tuple[dict[str, Any], str]:
        """A new key for `team`. Returns (its public record, the key: shown once, never stored)."""
        key_id, key = new_key()
        return self._store(key_id, key, team, role, name), key

    def ensure_key(self, key: str, team: str, role: Role, name: str) -> dict[str, Any]:
        """Store a key chosen by the deployment (the bootstrap admin key); idempotent."""
        m = _KEY.match(key)
        if not m:
            raise ValueError(
                "a bootstrap key must look like saeq_<16 hex>_<43 url-safe chars>; make one with `saeq keys new`"
            )
        return self._store(m.group(1), key, team, role, name)

    def _store(self, key_id: str, key: str, team: str, role: Role, name: str) -> dict[str, Any]:
        record = {
            "key_id": key_id,
            "team": valid_team(team),
            "role": role,
            "name": name,
            "created_at": time.time(),
            "revoked_at": None,
        }
        pipe = self.r.pipeline()
        pipe.hset(redis_keys.api_key(key_id), mapping={"record": json.dumps(record), "digest": digest(key)})
        pipe.sadd(redis_keys.API_KEYS, key_id)
        pipe.sadd(redis_keys.TEAMS, team)
        pipe.execute()
        return record

    def authenticate(self, key: str) -> Principal | None:
        """The caller behind a key, or None for a malformed, unknown or revoked key."""
        m = _KEY.match(key)
        if not m:
            return None
        stored = cast(dict[str, str], self.r.hgetall(redis_keys.api_key(m.group(1))))  # decode_responses=True
        if not stored or not hmac.compare_digest(stored["digest"], digest(key)):
            return None
        record = json.loads(stored["record"])
        if record["revoked_at"] is not None:
            return None
        return Principal(team=record["team"], role=record["role"], key_id=record["key_id"])

    def keys(self, team: str | None = None) -> list[dict[str, Any]]:
        ids = sorted(cast(set[str], self.r.smembers(redis_keys.API_KEYS)))
        pipe = self.r.pipeline(transaction=False)
        for key_id in ids:
            pipe.hget(redis_keys.api_key(key_id), "record")
        records = [json.loads(raw) for raw in pipe.execute() if raw] if ids else []
        return sorted((r for r in records if team is None or r["team"] == team), key=lambda r: r["created_at"])

    def revoke(self, key_id: str) -> dict[str, Any] | None:
        raw = self.r.hget(redis_keys.api_key(key_id), "record") if re.fullmatch(r"[0-9a-f]{16}", key_id) else None
        if raw is None:
            return None
        record = json.loads(raw)
        if record["revoked_at"] is None:
            record["revoked_at"] = time.time()
            self.r.hset(redis_keys.api_key(key_id), "record", json.dumps(record))
        return record

    # ---- quotas ------------------------------------------------------------------------------

    def set_default_quota(self, quota: TeamQuota) -> None:
        """The deployment's default, written by the API at start so workers read the same."""
        self.r.set(redis_keys.DEFAULT_QUOTA, quota.model_dump_json())
        self._quotas.clear()

    def set_quota(self, team: str, quota: TeamQuota) -> None:
        pipe = self.r.pipeline()
        pipe.set(redis_keys.team_quota(valid_team(team)), quota.model_dump_json())
        pipe.sadd(redis_keys.TEAMS, team)
        pipe.execute()
        self._quotas.pop(team, None)

    def quota(self, team: str) -> TeamQuota:
        cached = self._quotas.get(team)
        if cached is not None and time.monotonic() - cached[0] < self.QUOTA_TTL_S:
            return cached[1]
        team_raw, default_raw = self.r.mget(redis_keys.team_quota(team), redis_keys.DEFAULT_QUOTA)
        raw = team_raw or default_raw
        quota = TeamQuota.model_validate_json(raw) if raw else TeamQuota()
        self._quotas[team] = (time.monotonic(), quota)
        return quota

    def teams(self) -> list[str]:
        return sorted(cast(set[str], self.r.smembers(redis_keys.TEAMS)))

    def add_team(self, team: str) -> None:
        self.r.sadd(redis_keys.TEAMS, valid_team(team))
