"""Objects the routes share, built once per app, and the caller's identity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from celery import Celery
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from saeq.platform.registry import Registry, Send
from saeq.platform.store import ObjectStore
from saeq.platform.teams import Principal, Teams
from saeq_api.settings import ApiSettings

_ANONYMOUS_ADMIN = Principal(team="default", role="admin")
# Declares the bearer scheme in the OpenAPI (Swagger's Authorize button, generated clients send
# the key); auto_error=False so a missing or malformed header gets our 401 below, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="an API key: `saeq keys create TEAM`")


@dataclass
class Services:
    settings: ApiSettings
    registry: Registry
    store: ObjectStore
    celery: Celery
    send: Send

    @property
    def teams(self) -> Teams:
        return self.registry.teams


def services(request: Request) -> Services:
    return request.app.state.services


def principal(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """The team and role behind the request's bearer key; 401 without a valid one. The key is
    never logged or stored: only its SHA-256 is compared."""
    svc: Services = request.app.state.services
    if svc.settings.auth == "off":
        return _ANONYMOUS_ADMIN
    who = svc.teams.authenticate(credentials.credentials.strip()) if credentials is not None else None
    if who is None:
        raise HTTPException(
            401,
            detail="a valid API key is required: send `Authorization: Bearer <key>` "
            "(an admin creates keys with `saeq keys create TEAM`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return who


def admin(who: Annotated[Principal, Depends(principal)]) -> Principal:
    if not who.is_admin:
        raise HTTPException(403, detail=f"this needs an admin key; yours belongs to team {who.team!r}")
    return who


Svc = Annotated[Services, Depends(services)]
Caller = Annotated[Principal, Depends(principal)]
Admin = Annotated[Principal, Depends(admin)]
