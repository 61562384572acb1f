"""Objects the routes share, built once per app."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from fastapi import Request

from saeq.registry import Registry, Send
from saeq.store import ObjectStore
from saeq_api.settings import ApiSettings


@dataclass
class Services:
    settings: ApiSettings
    registry: Registry
    store: ObjectStore
    celery: Celery
    send: Send


def services(request: Request) -> Services:
    return request.app.state.services
