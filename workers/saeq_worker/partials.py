"""Finished work of an unfinished label or evaluate job, kept in the store (keys.partial_result) so
that a later attempt (after a kill, a preemption, a drain) takes it instead of redoing it.

Each object says which job and which spec it belongs to; one that does not parse or is another's
is ignored (and redone). They are deleted once the job's manifest is published: the published
outputs hold everything they did, and a job's artifact listing is then what the manifest names."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from saeq import keys
from saeq_worker.running import RunningJob

log = logging.getLogger("saeq.worker")

PARTIAL_FORMAT = "saeq.partial/1"


def spec_sha256(job: RunningJob) -> str:
    """The job's spec, as a digest: a partial result made under another spec is not this job's."""
    doc = json.dumps(job.spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(doc.encode()).hexdigest()


def owner(job: RunningJob) -> dict[str, str]:
    """What every partial result records of its job, and is checked against when read back."""
    return {"format": PARTIAL_FORMAT, "job_id": job.id, "spec_sha256": spec_sha256(job)}


def put_partial(job: RunningJob, name: str, data: bytes, content_type: str) -> None:
    """Store one finished piece. A piece of that name left by an earlier attempt was refused when
    read back (else it would not be redone), so it is replaced: keys are write-once otherwise."""
    key = keys.partial_result(job.id, name)
    if job.store.exists(key):
        job.store.delete(key)
    job.store.put(key, data, content_type=content_type)


def put_json(job: RunningJob, name: str, body: dict[str, Any]) -> None:
    put_partial(job, name, json.dumps({**owner(job), "body": body}).encode(), "application/json")


def partial_names(job: RunningJob, prefix: str) -> list[str]:
    """Names of the stored pieces starting with `prefix`, sorted."""
    root = keys.partial_prefix(job.id)
    return sorted(i.key[len(root) :] for i in job.store.list(root) if i.key[len(root) :].startswith(prefix))


def read_json(job: RunningJob, prefix: str) -> dict[str, dict[str, Any]]:
    """The bodies of the JSON pieces named `prefix*` that are this job's and this spec's, by name."""
    want, out = owner(job), {}
    for name in partial_names(job, prefix):
        try:
            doc = json.loads(job.store.get(keys.partial_result(job.id, name)))
            if not isinstance(doc, dict) or any(doc.get(k) != v for k, v in want.items()):
                raise ValueError("another job's or another spec's")
            if not isinstance(doc.get("body"), dict):
                raise ValueError("no body")
        except (ValueError, KeyError) as e:
            log.warning("job %s: partial result %s ignored (%s): it is redone", job.id, name, e)
            continue
        out[name] = doc["body"]
    return out


def read_partial(job: RunningJob, name: str) -> bytes:
    return job.store.get(keys.partial_result(job.id, name))


def drop_partial(job: RunningJob, name: str) -> None:
    """Delete a piece a later one supersedes (best effort, as drop_partials)."""
    try:
        job.store.delete(keys.partial_result(job.id, name))
    except Exception as e:
        log.warning("job %s: partial result %s not deleted: %s", job.id, name, e)


def drop_partials(job: RunningJob) -> None:
    """Delete the job's partial results, once its manifest is published. Best effort: a piece
    left behind is harmless (no manifest names it) and is gone with the job's prefix."""
    for info in job.store.list(keys.partial_prefix(job.id)):
        try:
            job.store.delete(info.key)
        except Exception as e:  # the job's outputs are published: never fail it for this
            log.warning("job %s: partial result %s not deleted: %s", job.id, info.key, e)
