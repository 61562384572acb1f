"""The typed job record (saeq.specs.records) on a real Redis: what the registry writes reads back as
a JobRecord; an old record (no format) is read; a newer or foreign one is refused with an error
naming the field, never half-parsed."""

from __future__ import annotations

import json

import pytest
import redis

from saeq.platform import redis_keys
from saeq.platform.registry import Registry
from saeq.specs.records import RECORD_FORMAT, JobRecord, JobRecordError

DB = 13
"""A database of its own, flushed first."""


@pytest.fixture
def registry(redis_srv) -> Registry:
    client = redis.Redis.from_url(f"{redis_srv.url.rsplit('/', 1)[0]}/{DB}", decode_responses=True)
    client.flushdb()
    return Registry(client)


def _job(registry: Registry) -> str:
    job, _ = registry.create(kind="harvest", spec={"kind": "harvest"}, queue="gpu", depends_on=[], team="lab")
    return job["id"]


def test_a_stored_record_reads_back_as_a_job_record(registry):
    job_id = _job(registry)
    record = JobRecord.read(registry.get(job_id))
    assert (record.format, record.id, record.state, record.team) == (RECORD_FORMAT, job_id, "queued", "lab")
    assert record.spec == {"kind": "harvest"} and record.progress["phase"] == "queued"
    (summary,) = registry.list(summary=True)
    assert "spec" not in summary and JobRecord.read(summary).spec is None


def test_a_record_from_before_format_versions_is_read(registry):
    job_id = _job(registry)
    registry.r.hdel(redis_keys.job(job_id), "format")
    assert registry.get(job_id)["state"] == "queued"
    assert JobRecord.read(registry.get(job_id)).format == 1


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("format", 2, "format"),  # a newer saeq wrote it
        ("state", "archived", "state"),  # no state this saeq knows
        ("attempts", "many", "attempts"),
        ("depends_on", "abc", "depends_on"),
    ],
)
def test_a_newer_or_foreign_record_is_refused_naming_the_field(registry, field, value, named):
    job_id = _job(registry)
    registry.r.hset(redis_keys.job(job_id), field, json.dumps(value))
    with pytest.raises(JobRecordError) as refused:
        registry.get(job_id)
    assert refused.value.field == named and f"field {named!r}" in str(refused.value)
    with pytest.raises(JobRecordError):
        registry.list()


def test_a_record_missing_a_field_is_refused(registry):
    job_id = _job(registry)
    registry.r.hdel(redis_keys.job(job_id), "kind")
    with pytest.raises(JobRecordError, match="field 'kind'"):
        registry.get(job_id)
