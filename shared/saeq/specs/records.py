"""The job record: what the registry stores in Redis for a job, as a typed contract between the API,
the workers and the reaper. Pydantic only.

A record carries a `format` version. One without it is from before versions (format 1, today's
fields); one from a newer saeq, or a hash that is no job record, is refused with an error naming
the field at fault, never half-parsed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from saeq.specs.states import JobState

RECORD_FORMAT = 1
"""The record format this saeq writes and reads."""


class JobRecordError(ValueError):
    """A stored record this saeq cannot read: `field` names the first field at fault."""

    def __init__(self, job_id: str, field: str, message: str):
        super().__init__(f"job record {job_id!r}: field {field!r}: {message}")
        self.job_id, self.field = job_id, field


class JobRecord(BaseModel):
    """One job, as `Registry.get` reads it (`Registry.list(summary=True)` reads all but the spec
    and the worker-side fields, which then take their defaults)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    format: int = Field(default=RECORD_FORMAT, ge=1, le=RECORD_FORMAT)
    """The record's format version; absent in records written before versions (format 1)."""
    id: str = Field(pattern=r"^[0-9a-f]{32}$")
    kind: str
    state: JobState
    queue: str
    depends_on: list[str]
    """Ids of the jobs that must succeed before this one is sent."""
    created_at: float
    attempts: int = Field(ge=0)
    """Claims so far: a worker lost mid-job costs one."""
    max_attempts: int = Field(ge=0)
    progress: dict[str, Any]
    """fraction, phase, message and figures, as the worker last reported them."""
    cancel_requested: bool
    spec: dict[str, Any] | None = None
    """The job's spec; None in the hash when it lives in the object store (`spec_key`)."""
    spec_key: str | None = None
    spec_bytes: int | None = None
    name: str | None = None
    team: str = "default"
    priority: int = 0
    time_limit_s: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    error: dict[str, Any] | None = None
    """code, field and message of the job's end, when it did not succeed."""
    manifest_key: str | None = None
    worker: str | None = None
    heartbeat_at: float | None = None
    dispatch_id: str = ""
    """The current message's id: a message with another is stale and skipped."""
    dispatched: bool = False

    @classmethod
    def read(cls, fields: Mapping[str, Any]) -> JobRecord:
        """A decoded record (each hash value JSON-decoded), validated whole; JobRecordError
        naming the first field at fault otherwise."""
        job_id = str(fields.get("id", "?"))
        version = fields.get("format", RECORD_FORMAT)
        if version != RECORD_FORMAT:
            raise JobRecordError(
                job_id, "format", f"format {version!r}; this saeq reads format {RECORD_FORMAT} (a newer saeq wrote it?)"
            )
        try:
            return cls.model_validate(dict(fields))
        except ValidationError as e:
            first = e.errors()[0]
            field = ".".join(str(part) for part in first["loc"]) or "?"
            raise JobRecordError(job_id, field, f"{first['msg']} (got {first.get('input')!r})") from None
