"""Worker deployment settings (SAEQ_* environment variables)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from saeq.platform.settings import PlatformSettings
from saeq_worker.threads import parse_threads


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
    shard_cache_dir: str = ""
    """Node-local cache of harvest shards read from S3, shared by every job on the node
    (content-addressed, LRU); empty: `<cache_dir>/shards`. Put it on a fast local disk."""
    shard_cache_bytes: int = Field(default=50 << 30, ge=0)
    """Size bound of the shard cache (clamped to the free disk at start); 0 turns it off."""
    worker_max_tasks_per_child: int = Field(default=50, ge=0)
    """Tasks a pool process runs before Celery replaces it (bounds memory creep from model caches
    across many jobs); 0: never. The steer worker sets 0: each live request is a task, and a new
    process reloads the model."""
    torch_threads: int | None = None
    """Torch's thread count; unset: the CPUs this worker may use (cgroup quota, affinity)."""

    @field_validator("torch_threads", mode="before")
    @classmethod
    def _threads(cls, value: object) -> int | None:
        return parse_threads(value if isinstance(value, (str, int)) or value is None else str(value))
