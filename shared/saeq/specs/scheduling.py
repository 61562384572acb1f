"""Scheduling contracts: what a worker advertises about the GPUs (or CPUs) it serves, and what a
job is estimated to need of them. Pydantic only, no torch: the API (admission), the scheduler
(capacity) and the worker (advertisement) share these shapes through Redis."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class WorkerAd(BaseModel):
    """One worker's advertisement, re-published every few seconds with a TTL (saeq.platform.pools):
    a worker that dies stops counting once its ad expires."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    worker: str = Field(min_length=1)
    """"host:pid" of the worker's main process (one ad per worker, not per prefork child)."""
    queue: str = Field(min_length=1)
    """The Celery queue it consumes (e.g. "gpu", "cpu", "steer")."""
    device: Literal["cpu", "cuda"]
    device_name: str
    """What the device is, for people: "NVIDIA H100 80GB HBM3", or the CPU model."""
    memory_bytes: int = Field(ge=0)
    """Memory of ONE device: a GPU's total memory, or the worker's memory limit on CPU."""
    count: int = Field(ge=1)
    """Devices the worker holds (CUDA devices visible to it; 1 on CPU)."""
    slots: int = Field(ge=1)
    """Jobs it runs at once (the pool's concurrency)."""
    updated_at: float
    """Unix time of this advertisement."""


class MemoryEstimate(BaseModel):
    """Peak device memory a job is expected to use, from its spec alone (saeq.platform.memory_estimate)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    total_bytes: int = Field(ge=0)
    parts: dict[str, int]
    """Each term by name (e.g. "model_weights", "activations", "sae_adam_state"), in bytes; they sum
    to total_bytes."""
    shrink_field: str
    """The spec field to shrink first to lower the peak: the biggest term's field, e.g.
    "spec.batch_size" or "spec.saes.0.d_sae"."""


class PlanBasis(BaseModel):
    """The finished jobs a plan's wall time and GPU-seconds come from."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    scope: Literal["team", "cluster"]
    """The team's own jobs, or (when it has none alike) every team's."""
    job_ids: list[str]
    """The jobs read, newest first."""
    n_jobs: int = Field(ge=1)
    median_tokens_per_s: float = Field(gt=0)
    """Their median end-to-end rate: tokens over the wall time from start to end."""
    median_gpu_s_per_token: float = Field(ge=0)
    """Their median device-seconds (CPU-seconds on CPU workers) per token."""
    startup_s: float | None = None
    """The fixed term of wall = startup + tokens / rate: the jobs' recorded start-ups (cold or warm,
    `cold_start`), else fitted when jobs of two or more sizes allowed it."""
    work_tokens_per_s: float | None = None
    """The rate of that formula where the jobs recorded their start-ups: their median tokens over
    the wall time after start-up."""
    cold_start: bool | None = None
    """Whether the plan expects the job to load its model into the worker (cold) or find it loaded
    (warm); None when the kind loads no model or no start-up was recorded."""


class QuotaVerdict(BaseModel):
    """What a submit of the spec would get now: the checks `POST /v1/jobs` runs, as reasons."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    allowed: bool
    status: int | None = None
    """The refusal's HTTP status (422, 403 or 429); None when the job would be queued."""
    reasons: list[dict[str, str | None]] = []
    """Each refusal's `field` (None for a whole-team limit) and `message`."""


class Plan(BaseModel):
    """A job's cost before it runs (`POST /v1/jobs?dry_run=true`): nothing is queued or stored."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: str
    team: str
    queue: str
    tokens: int
    """Tokens the job reads or trains on, from the spec (a steer job: the tokens it generates)."""
    bytes_to_store: int | None
    """What its artifacts take in the store; None when the spec alone cannot tell (e.g. d_model)."""
    bytes_formula: str
    peak_memory: MemoryEstimate | None
    """saeq.platform.memory_estimate's estimate of peak device memory; None: kind or model unknown."""
    wall_s: float | None
    """Predicted wall time from start to end; None without finished jobs alike to go on."""
    gpu_s: float | None
    """Predicted device-seconds (CPU-seconds on CPU workers)."""
    basis: PlanBasis | None
    basis_text: str
    """The basis in words, or plainly that there is none."""
    jobs_ahead: int = Field(ge=0)
    """Jobs that would start before this one."""
    jobs_ahead_basis: str
    """How `jobs_ahead` was counted (the fair-share scheduler's order)."""
    verdict: QuotaVerdict
