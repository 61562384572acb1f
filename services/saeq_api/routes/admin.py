"""Who am I, and (admins) API keys and team quotas."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from saeq.platform import fair_share
from saeq.platform.teams import TEAM_PATTERN, Role, TeamQuota
from saeq_api.deps import Admin, Caller, Svc
from saeq_api.schemas import errors

router = APIRouter(prefix="/v1", tags=["teams"], responses=errors(401, 403, 404, 413, 503))


class KeyCreate(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    team: str = Field(pattern=TEAM_PATTERN)
    """The team whose jobs the key submits and sees (created if new)."""
    role: Role = "member"
    """`admin` sees and manages every team."""
    name: str = Field(default="", max_length=200)
    """Whose key it is, for listings."""


class KeyPublic(BaseModel):
    key_id: str
    team: str
    role: Role
    name: str
    created_at: float
    revoked_at: float | None


class KeyCreated(KeyPublic):
    key: str
    """The API key itself: shown in this answer only (saeq stores its SHA-256)."""


class TeamPublic(BaseModel):
    team: str
    quota: TeamQuota
    active: int
    """Jobs dispatched to workers (running, or about to)."""
    waiting: int
    """Jobs waiting for a slot or for their dependencies."""
    stored: int = 0
    """Job records kept, in any state (quota max_stored_jobs; ended ones expire)."""


class PurgeRequest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    team: str | None = Field(default=None, pattern=TEAM_PATTERN)
    """Whose ended jobs; None: every team's."""
    ended_before: float | None = Field(default=None, allow_inf_nan=False)
    """Only jobs that ended before this time (Unix seconds); None: every ended job."""


class PurgeResult(BaseModel):
    purged: int
    """Ended jobs deleted: their records, events and stored specs (their artifacts stay)."""
    job_ids: list[str]


class TeamShare(BaseModel):
    weight: float
    """The team's fair-share weight (its quota's `share_weight`)."""
    usage_s: float
    """Device-seconds its jobs held (GPU-seconds, CPU-seconds on CPU workers), decayed as fair
    share counts them."""
    share: float
    """Its fraction of all teams' decayed device-seconds."""
    target: float
    """Its weight over the summed weights of the teams with a job open: the share fair share
    steers to (0 while it has none)."""
    active: bool
    """It has a job open (waiting, sent or running)."""


class Me(BaseModel):
    team: str
    role: Role
    key_id: str | None
    quota: TeamQuota
    active: int
    waiting: int
    stored: int = 0
    share: TeamShare
    """The team's use of the GPUs against its fair share (docs/scheduling.md)."""


def _team(svc, team: str) -> TeamPublic:
    return TeamPublic(
        team=team, quota=svc.teams.quota(team), stored=svc.registry.stored_jobs(team), **svc.registry.usage(team)
    )


@router.get("/me", response_model=Me)
def whoami(svc: Svc, who: Caller) -> Me:
    """The caller's team, role, quota and the team's current use of it."""
    t = _team(svc, who.team)
    return Me(
        team=who.team,
        role=who.role,
        key_id=who.key_id,
        quota=t.quota,
        active=t.active,
        waiting=t.waiting,
        stored=t.stored,
        share=_share(svc, who.team, t.quota),
    )


def _share(svc, team: str, quota: TeamQuota) -> TeamShare:
    row = fair_share.shares(svc.registry).get(team)
    if row is None:  # a team the scheduler has not seen yet: its own usage, no share of the others'
        usage = fair_share.usage_s(svc.registry.r, team)
        row = {"weight": quota.share_weight, "usage_s": usage, "share": 0.0, "target": 0.0, "active": False}
    return TeamShare(**{k: row[k] for k in TeamShare.model_fields})


@router.post("/admin/keys", status_code=201, response_model=KeyCreated)
def create_key(body: KeyCreate, svc: Svc, _: Admin) -> KeyCreated:
    """A new API key; the answer is the only place its text appears."""
    record, key = svc.teams.create_key(body.team, body.role, body.name)
    return KeyCreated(**record, key=key)


@router.get("/admin/keys", response_model=list[KeyPublic])
def list_keys(svc: Svc, _: Admin, team: Annotated[str | None, Query(pattern=TEAM_PATTERN)] = None) -> list[KeyPublic]:
    """Every key's public record (never the key)."""
    return [KeyPublic(**r) for r in svc.teams.keys(team)]


@router.delete("/admin/keys/{key_id}", response_model=KeyPublic)
def revoke_key(key_id: str, svc: Svc, _: Admin) -> KeyPublic:
    """Revoke a key: requests with it get 401 from now on; its team's jobs are untouched."""
    record = svc.teams.revoke(key_id)
    if record is None:
        raise HTTPException(404, detail=f"no key {key_id!r}")
    return KeyPublic(**record)


@router.get("/admin/teams", response_model=list[TeamPublic])
def list_teams(svc: Svc, _: Admin) -> list[TeamPublic]:
    """Every team with its quota and use."""
    return [_team(svc, t) for t in svc.teams.teams()]


@router.put("/admin/teams/{team}/quota", response_model=TeamPublic)
def set_quota(team: Annotated[str, Path(pattern=TEAM_PATTERN)], body: TeamQuota, svc: Svc, _: Admin) -> TeamPublic:
    """Replace a team's quota. A larger max_running starts its waiting jobs at once."""
    from saeq.platform.registry import start_waiting

    svc.teams.set_quota(team, body)
    start_waiting(svc.registry, team, svc.send)
    return _team(svc, team)


@router.post("/admin/purge", response_model=PurgeResult)
def purge(body: PurgeRequest, svc: Svc, _: Admin) -> PurgeResult:
    """Delete ended jobs' records now, before their retention (SAEQ_JOB_RETENTION_S) ends: they
    stop counting against the team's max_stored_jobs. Queued and running jobs are never touched."""
    ids = svc.registry.purge(team=body.team, ended_before=body.ended_before)
    return PurgeResult(purged=len(ids), job_ids=ids)
