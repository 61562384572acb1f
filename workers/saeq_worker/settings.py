"""Worker deployment settings (SAEQ_* environment variables)."""

from __future__ import annotations

from typing import Literal

from saeq.config import PlatformSettings


class WorkerSettings(PlatformSettings):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where jobs compute: auto picks CUDA when present."""
    metrics_port: int = 0
    """Port of this worker's Prometheus endpoint (0: none)."""
    heartbeat_file: str | None = None
    """Touched on every heartbeat tick; a liveness probe can check its age."""
