"""Errors a job can end with, each with a code a user can act on."""

from __future__ import annotations


class JobError(Exception):
    """A job failed for a reason the user can act on. `field` names the spec field at fault."""

    code = "internal"

    def __init__(self, message: str, *, field: str | None = None):
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidSpec(JobError):
    code = "invalid_spec"


class NotFound(JobError):
    code = "not_found"


class OutOfMemory(JobError):
    code = "out_of_memory"


class Cancelled(JobError):
    code = "cancelled"


class UpstreamFailed(JobError):
    code = "upstream_failed"


class WorkerLost(JobError):
    code = "worker_lost"


class StoreError(JobError):
    code = "store_error"
