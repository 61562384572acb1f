"""Response bodies of the API (request bodies are saeq.specs)."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel

from saeq.errors import ERROR_CODES

PROBLEM_JSON = "application/problem+json"


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer, an RFC 9457 problem (application/problem+json): `detail` is a
    sentence, or (422, and 403 for quotas) a list of {loc, field, msg, type} naming each field at
    fault, which `errors` repeats."""

    type: str = "about:blank"
    title: str | None = None
    status: int | None = None
    detail: str | list[dict[str, Any]]
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None
    code: str | None = None
    """`store_error` when the object store failed (what to check is in `detail`)."""


_WHY = {
    401: "No valid API key (`Authorization: Bearer <key>`).",
    403: "The key's role or team quota forbids it.",
    404: "No such object visible to the key's team.",
    409: "Not ready yet.",
    413: "Request body too large.",
    422: "Invalid request: `detail` names the field.",
    429: "A team quota is full (waiting or stored jobs, submits or live requests per minute, live requests at once); see Retry-After.",
    500: "A worker failed to answer.",
    503: "A backing service (Redis, the object store) is unreachable or failing: `detail` says which.",
    504: "No worker answered in time.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error statuses."""
    schema = {"$ref": "#/components/schemas/ErrorBody"}
    return {
        c: {"model": ErrorBody, "description": _WHY[c], "content": {PROBLEM_JSON: {"schema": schema}}} for c in codes
    }


class JobError(BaseModel):
    code: Literal[ERROR_CODES]  # type: ignore[valid-type]
    field: str | None = None
    message: str


class MemoryFigures(BaseModel):
    """A job's peak memory on its busiest device: estimated from its spec (saeq.platform.memory_estimate)
    and measured by its worker (saeq_worker.memory_peak), in bytes."""

    estimated_bytes: int | None
    measured_peak_bytes: int
    device: str
    estimated_parts: dict[str, int] | None = None


class Progress(BaseModel):
    fraction: float
    phase: str
    message: str = ""
    figures: dict[str, float] = {}
    memory: MemoryFigures | None = None
    """Written when the job stops, however it stops."""


SUMMARY_MESSAGE_CHARS = 1000
"""Longest error or progress message in a listing (the job's own page has the whole)."""


class JobSummary(BaseModel):
    """A job in listings: everything but its spec (`GET /v1/jobs/{id}` has it), a few KB at most."""

    id: str
    kind: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    name: str | None
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
    def of(cls, record: dict) -> Self:
        data = {k: record[k] for k in cls.model_fields if k in record}
        if cls is JobSummary:  # messages a worker wrote may quote user text: a listing cuts them short
            if data.get("error"):
                data["error"] = {**data["error"], "message": data["error"]["message"][:SUMMARY_MESSAGE_CHARS]}
            if data.get("progress"):
                data["progress"] = {
                    **data["progress"],
                    "message": data["progress"].get("message", "")[:SUMMARY_MESSAGE_CHARS],
                }
        return cls.model_validate(data)


class JobPublic(JobSummary):
    """A job with its spec."""

    spec: dict[str, Any]


class JobList(BaseModel):
    jobs: list[JobSummary]
    next_before: str | None
    """An opaque cursor: pass as `before` to get the next page; null on the last page."""


class JobEvent(BaseModel):
    id: str
    t: float
    phase: str
    message: str
    figures: dict[str, Any] = {}


class JobEvents(BaseModel):
    events: list[JobEvent]
    more: bool = False
    """True when the log goes on past this page: ask again with `after=next_after`."""
    next_after: str = "0-0"
    """The last event's id (the `after` given when the page is empty): the next page's `after`."""


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
    state: Literal["storing", "stored"] = "stored"
    """`storing` while its bytes are copied to the store (a DELETE then answers 409)."""


class UploadList(BaseModel):
    uploads: list[UploadPublic]
    """A page of the team's uploads, oldest first."""
    next_cursor: str | None = None
    """Pass as `cursor` to get the next page; null on the last page."""
    used_bytes: int
    """Bytes they count against the team's quota."""
    max_upload_bytes: int
    """The team's quota (413 for an upload beyond it)."""
    n_uploads: int
    """Uploads the team keeps, on every page, stored or being stored."""
    max_uploads: int
    """The team's quota of uploads (429 for one beyond it)."""


class ModelCard(BaseModel):
    """One entry of `GET /v1/models`, in OpenAI's shape, plus what the id means."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "saeq"
    description: str


class ModelList(BaseModel):
    """`GET /v1/models`: the `model` values a chat completion takes."""

    object: Literal["list"] = "list"
    data: list[ModelCard]
