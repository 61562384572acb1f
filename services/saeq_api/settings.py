"""API deployment settings (SAEQ_* environment variables)."""

from __future__ import annotations

from pydantic import Field

from saeq.config import PlatformSettings


class ApiSettings(PlatformSettings):
    reap_every_s: float = Field(default=5.0, gt=0)
    """How often the API looks for running jobs whose worker was lost."""
    max_upload_bytes: int = 512 << 20
    """Largest corpus file accepted by `POST /v1/uploads`."""
    live_timeout_s: float = Field(default=120.0, gt=0)
    """How long `POST /v1/steer` and `/v1/chat/completions` wait for a worker's answer."""
