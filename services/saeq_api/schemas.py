"""Response bodies of the API (request bodies are saeq.specs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from saeq.errors import ERROR_CODES


class JobError(BaseModel):
    code: Literal[ERROR_CODES]  # type: ignore[valid-type]
    field: str | None = None
    message: str


class Progress(BaseModel):
    fraction: float
    phase: str
    message: str = ""
    figures: dict[str, float] = {}


class JobPublic(BaseModel):
    id: str
    kind: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    name: str | None
    spec: dict[str, Any]
    depends_on: list[str]
    queue: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    max_attempts: int
    cancel_requested: bool
    progress: Progress
    error: JobError | None
    manifest_key: str | None
    worker: str | None

    @classmethod
    def of(cls, record: dict) -> "JobPublic":
        return cls.model_validate({k: record.get(k) for k in cls.model_fields})


class JobList(BaseModel):
    jobs: list[JobPublic]
    next_before: float | None
    """Pass as `before` to get the next page; null on the last page."""


class JobEvent(BaseModel):
    id: str
    t: float
    phase: str
    message: str
    figures: dict[str, Any] = {}


class JobEvents(BaseModel):
    events: list[JobEvent]


class Artifact(BaseModel):
    key: str
    size: int
    url: str
    """Presigned download URL (expires after an hour)."""


class JobArtifacts(BaseModel):
    job_id: str
    published: bool
    """True once the job's manifest is written; until then the list may be incomplete."""
    manifest_key: str | None
    artifacts: list[Artifact]


class UploadPublic(BaseModel):
    upload_id: str
    key: str
    size: int
    n_documents: int
