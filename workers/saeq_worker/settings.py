"""Worker deployment settings (SAEQ_* environment variables)."""

from __future__ import annotations

from typing import Literal

from saeq.platform.settings import PlatformSettings


class WorkerSettings(PlatformSettings):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where jobs compute: auto picks CUDA when present."""
    metrics_port: int = 0
    """Port of this worker's Prometheus endpoint (0: none)."""
    metrics_addr: str = "0.0.0.0"
    """Address the Prometheus endpoint listens on."""
    heartbeat_file: str | None = None
    """Touched every `heartbeat_s` while the worker's event loop runs (and by each running job's
    heartbeat); a liveness probe checks its age."""
