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
from pydantic import BaseModel, ConfigDict, Field

from saeq.platform import redis_keys
from saeq.specs.api_keys import new_key  # the key's shape is shared with the client

TEAM_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
_TEAM = re.compile(TEAM_PATTERN)
_KEY = re.compile(r"^saeq_([0-9a-f]{16})_[A-Za-z0-9_-]{43}$")
Role = Literal["member", "admin"]


class TeamQuota(BaseModel):
    """What one team may use. Jobs beyond `max_running` wait their turn; beyond the others they are
    refused at submit, with the reason. The per-job limits (403) are checked by `saeq.specs.costs`."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)
    max_running: int = Field(default=4, ge=0, le=10_000)
    """Jobs of the team dispatched to workers at once; the rest wait, highest priority first."""
    max_queued: int = Field(default=200, ge=0, le=1_000_000)
    """Jobs of the team waiting to run (for a slot, or for their dependencies); more are refused (429)."""
    max_tokens: int = Field(default=100_000_000, gt=0)
    """Tokens one job may read: a harvest's or evaluation's max_tokens, a training's total_tokens,
    a label job's index_tokens (403 beyond)."""
    max_latents: int = Field(default=1 << 20, gt=0)
    """Latents (d_sae) a train job may create, summed over its SAEs: every batch feeds every one
    (403 beyond, naming the SAE's width field, or `spec.saes` for the sum)."""
    max_time_s: float = Field(default=24 * 3600.0, gt=0)
    """Longest a job may run, and the time limit of a job that asks for none (403 beyond)."""
    max_stored_jobs: int = Field(default=1_000, ge=0, le=1_000_000)
    """Job records of the team kept in Redis, in any state; ended ones expire after the
    deployment's `job_retention_s` (or an admin purge). A submit beyond it is refused (429)."""
    submits_per_minute: int = Field(default=120, ge=0, le=1_000_000)
    """Job submits the team may make in any 60 s (429 with Retry-After beyond). Uploads
    (`POST /v1/uploads`) count against the same number in a window of their own."""
    max_job_cost: int = Field(default=1_000_000_000, gt=0)
    """What one job may cost as a whole, in token-units (one: a token read in a batch at one hook):
    a harvest's max_tokens x hooks; a training's total_tokens x its SAEs' latents summed / 16,384;
    an evaluation's max_tokens x 3 (three passes per batch) plus, per check, its articles x
    checks.context_len; a label job's index_tokens plus features x each LLM explainer's
    max_new_tokens x 200 plus features x judge questions (3 x n_score_examples) x 256; a steer
    job's prompts x (1 + sets x strengths) generations x max_new_tokens x 200 (a generated token
    holds the worker about 200 times as long) plus their prompts (4 characters a token). 403
    beyond, naming the factor nearest its own limit in the spec (e.g. `spec.hooks`, `spec.saes`,
    `spec.prompts`). The demo's largest job, its training, costs 691,200 (its evaluation 540,672,
    its label job 415,744)."""
    max_batch_tokens: int = Field(default=65_536, gt=0)
    """Tokens of one forward pass a job may ask for: batch_size x context_len of a harvest, of an
    evaluate or label job (its own context_len, or its harvest's for a trained SAE) and of an
    evaluation's checks, capped by the job's own tokens. A pass holds the worker, and a cancel
    waits for it (403 beyond, naming `spec.batch_size` or `spec.checks.batch_size`)."""
    max_upload_bytes: int = Field(default=8 << 30, ge=0)
    """Bytes of uploaded corpora the team may keep in the store at once (413 beyond); delete
    uploads with `DELETE /v1/uploads/{id}`."""
    max_uploads: int = Field(default=1_000, ge=0, le=1_000_000)
    """Uploads the team may keep at once, stored or being stored (429 beyond): each costs a Redis
    record and a store object whatever its size."""
    live_concurrency: int = Field(default=2, ge=0, le=1_000)
    """Live requests of the team (steer, chat, label search) being computed or waiting at once
    (429 with Retry-After beyond). Whatever it is, the steer workers take the waiting requests of
    all teams in turn, one per team, so one team's queue never delays another's by more than one
    request each."""
    live_per_minute: int = Field(default=60, ge=0, le=1_000_000)
    """Live requests (steer, chat, label search) the team may start in any 60 s (429 with
    Retry-After: when the oldest of them leaves the window)."""
    live_prompt_tokens: int = Field(default=2_048, ge=1, le=1_000_000)
    """Longest prompt (in model tokens, chat template included) of a live steer or chat request:
    422 naming `prompt` or `messages`, from the worker, which counts the tokens; the API refuses at
    once a text longer than 16 characters a token (saeq.platform.live.MAX_CHARS_PER_TOKEN)."""


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
