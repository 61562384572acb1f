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


class EndpointError(JobError):
    """An LLM endpoint (explainer, judge) failed or answered something unusable."""

    code = "endpoint_error"


class TokenBudgetExhausted(JobError):
    """The job's token budget is spent; more requests would cost money the user did not grant."""

    code = "token_budget_exhausted"


class Preempted(Exception):
    """The job yielded its worker at a safe point, its state saved, to be queued again: a
    preemption (the scheduler's, or the worker shutting down), never a failure, so not a
    JobError and not one of ERROR_CODES. `figures`: how far it got (tokens, step, shards)."""

    def __init__(self, reason: str, **figures: float):
        super().__init__(reason)
        self.reason = reason
        self.figures = figures


class TimeLimitExceeded(JobError):
    """The job ran longer than its time limit (the spec's, capped by its team's quota)."""

    code = "time_limit"


ERROR_CODES = (
    "invalid_spec",
    "not_found",
    "out_of_memory",
    "worker_lost",
    "cancelled",
    "upstream_failed",
    "store_error",
    "endpoint_error",
    "token_budget_exhausted",
    "time_limit",
    "internal",
)
"""Every code a failed job can carry (the API's JobError.code)."""
