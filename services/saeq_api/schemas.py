"""Response bodies of the API (request bodies are saeq.specs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from saeq.errors import ERROR_CODES


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer: `detail` is a sentence, or (422, and 403 for quotas) a list of
    {loc, field, msg, type} naming each field at fault."""

    detail: str | list[dict[str, Any]]
    code: str | None = None
    """`store_error` when the object store failed (what to check is in `detail`)."""


_WHY = {401: "No valid API key (`Authorization: Bearer <key>`).", 403: "The key's role or team quota forbids it.",
        404: "No such object visible to the key's team.", 409: "Not ready yet.", 413: "Request body too large.",
        422: "Invalid request: `detail` names the field.", 429: "The team's quota of waiting jobs is full.",
        500: "A worker failed to answer.",
        503: "A backing service (Redis, the object store) is unreachable or failing: `detail` says which.",
        504: "No worker answered in time."}


def errors(*codes: int) -> dict[int, dict]:
    """OpenAPI `responses` for these error statuses."""
    return {c: {"model": ErrorBody, "description": _WHY[c]} for c in codes}


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
    team: str = "default"
    priority: int = 0
    time_limit_s: float | None = None
    """The job fails with code `time_limit` once it has run this long since it first started."""
    dispatched: bool = False
    """Sent to a worker queue; a queued job that is not waits for its dependencies or for a slot of
    its team's quota (max_running)."""

    @classmethod
    def of(cls, record: dict) -> "JobPublic":
        return cls.model_validate({k: record[k] for k in cls.model_fields if k in record})


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
    created_at: float | None = None


class UploadList(BaseModel):
    uploads: list[UploadPublic]
    """The team's uploads, oldest first."""
    used_bytes: int
    """Bytes they count against the team's quota."""
    max_upload_bytes: int
    """The team's quota (413 for an upload beyond it)."""
