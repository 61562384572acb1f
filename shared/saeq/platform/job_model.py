"""What the registry stores and says about a job, apart from Redis: field lists, the JSON encoding
of record fields, the error dicts a job ends with, events, and the exceptions a submit raises."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis.typing import EncodableT

DURATION_BUCKETS_S = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 12 * 3600, 24 * 3600)
CENSUS_FIELDS = ("kind", "state", "queue", "team", "created_at", "dispatched")
INLINE_SPEC_BYTES = 16 << 10
"""A spec larger than this (as JSON) lives in the object store (keys.job_spec), not in the job's
Redis record: a record then costs Redis a few KB whatever its spec holds (the body limit is 1 MiB)."""
DEFAULT_RETENTION_S = 7 * 24 * 3600.0
IDEMPOTENCY_TTL_S = 7 * 24 * 3600
SUMMARY_FIELDS = (
    "id",
    "kind",
    "state",
    "name",
    "team",
    "queue",
    "depends_on",
    "created_at",
    "started_at",
    "finished_at",
    "attempts",
    "max_attempts",
    "cancel_requested",
    "progress",
    "error",
    "manifest_key",
    "worker",
    "priority",
    "time_limit_s",
    "dispatched",
)
"""What listings read of a record: everything but the spec."""
LAST_EVENT_ID = f"{(1 << 64) - 1}-{(1 << 64) - 1}"


def new_id() -> str:
    return uuid.uuid4().hex


def waiting_score(priority: int, created_at: float) -> float:
    return (9 - priority) * 1e10 + created_at


class QuotaExceeded(Exception):
    """The team has as many waiting or stored jobs, or made as many submits this minute, as its
    quota allows."""

    def __init__(self, message: str, retry_after_s: int = 30):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class IdempotencyConflict(Exception):
    """An Idempotency-Key seen before, sent with a different request; `job_id` is the job the
    first request created."""

    def __init__(self, job_id: str):
        super().__init__(job_id)
        self.job_id = job_id


class MissingDependency(Exception):
    """A job listed in depends_on (at `index`) has no record any more: it expired or was purged."""

    def __init__(self, index: int, job_id: str):
        super().__init__(f"no job {job_id!r}")
        self.index, self.job_id = index, job_id


@dataclass
class Claim:
    """What a worker may do with a delivered message."""

    action: str  # "run" | "skip" | "busy"
    attempt: int = 0
    token: str = ""
    reason: str = ""


def cancelled_error() -> dict:
    return {"code": "cancelled", "field": None, "message": "cancelled by request"}


def time_limit_error(limit_s: float, elapsed_s: float) -> dict:
    return {"code": "time_limit", "field": None, "message": time_limit_message(limit_s, elapsed_s)}


def time_limit_message(limit_s: float, elapsed_s: float) -> str:
    return f"the job ran for {elapsed_s:,.1f} s since it first started, past its time limit of {limit_s:,g} s"


def worker_lost_error(job: dict) -> dict:
    return {
        "code": "worker_lost",
        "field": None,
        "message": f"the worker running this job was lost on each of {job['attempts']} attempts "
        f"(last: {job['worker']}); giving up after max_attempts={job['max_attempts']}",
    }


def event_entry(phase: str, message: str, figures: dict[str, Any]) -> dict[str, Any]:
    return {"t": time.time(), "phase": phase, "message": message, "figures": figures}


def encode(d: Mapping[str, Any]) -> dict[EncodableT, EncodableT]:
    """Record fields as Redis stores them: each value JSON-encoded (the Lua scripts compare them so)."""
    return {k: json.dumps(v) for k, v in d.items()}


def decode(d: Mapping[Any, Any]) -> dict[str, Any]:
    """A record as read (hgetall of a client that decodes replies: str fields, JSON values)."""
    return {k: json.loads(v) for k, v in d.items()}
