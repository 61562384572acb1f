"""Every object-store key saeq writes, built here and nowhere else.

Layout:
  jobs/{job_id}/manifest.json                      written last: the job's output is published
  jobs/{job_id}/harvest/{hook}/shard-{i:05d}.safetensors
  jobs/{job_id}/slices/harvest-{i:03d}.json        what slice i of a split harvest wrote
  jobs/{job_id}/truth/synthetic.safetensors        a synthetic harvest's true features and generator
  jobs/{job_id}/checkpoints/train-{tokens:012d}.pt  resumable state of a training job
  jobs/{job_id}/saes/{name}/{saelens,sparsify}/...  trained SAEs in SAELens's and sparsify's formats
  jobs/{job_id}/report/...                         an evaluation's metrics.json, plots, report.md
  jobs/{job_id}/index/feature-index.safetensors    a label job's feature index (sparse activations)
  jobs/{job_id}/labels/labels.jsonl                its labels and their scores
  jobs/{job_id}/partial/{name}                     finished work of an unfinished label or evaluate
                                                   job (a chunk of features, a metric pass, a check),
                                                   read back by a later attempt; deleted once the
                                                   manifest is published
  uploads/{upload_id}/{filename}                   corpora uploaded through the API
  cache/llm/{digest[:2]}/{digest}.json             an LLM endpoint's answer to one exact request
  specs/{job_id}.json                              a job's spec, when too large for its Redis record
Keys are write-once; a job's artifacts all live under its own prefix.
"""

from __future__ import annotations

import re

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,199}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def _job(job_id: str) -> str:
    if not _JOB_ID.match(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return f"jobs/{job_id}/"


def job_prefix(job_id: str) -> str:
    return _job(job_id)


def manifest(job_id: str) -> str:
    return _job(job_id) + "manifest.json"


def harvest_shard(job_id: str, hook: str, index: int) -> str:
    from saeq.hooks import parse

    return _job(job_id) + f"harvest/{parse(hook).name}/shard-{index:05d}.safetensors"


def harvest_slice_manifest(job_id: str, index: int) -> str:
    """What slice `index` of a split harvest wrote (its shards, checksums, sink counts): the slice
    is done once this exists, and the job's manifest is merged from these."""
    if not 0 <= index < 1000:
        raise ValueError(f"slice index {index} out of range")
    return _job(job_id) + f"slices/harvest-{index:03d}.json"


def synthetic_truth(job_id: str) -> str:
    """A synthetic harvest's ground truth: its true features and the generator's parameters."""
    return _job(job_id) + "truth/synthetic.safetensors"


def train_checkpoint(job_id: str, tokens: int) -> str:
    return _job(job_id) + f"checkpoints/train-{tokens:012d}.pt"


def checkpoint_prefix(job_id: str) -> str:
    return _job(job_id) + "checkpoints/"


def sae_file(job_id: str, sae_name: str, fmt: str, filename: str) -> str:
    if fmt not in ("saelens", "sparsify") or not _SAFE_NAME.match(sae_name) or not _SAFE_NAME.match(filename):
        raise ValueError(f"bad SAE file key part: {sae_name!r}, {fmt!r}, {filename!r}")
    return _job(job_id) + f"saes/{sae_name}/{fmt}/{filename}"


def sae_prefix(job_id: str, sae_name: str, fmt: str) -> str:
    return sae_file(job_id, sae_name, fmt, "x").rsplit("/", 1)[0] + "/"


def report_file(job_id: str, filename: str) -> str:
    if not _SAFE_NAME.match(filename):
        raise ValueError(f"unsafe file name {filename!r}")
    return _job(job_id) + f"report/{filename}"


def feature_index(job_id: str) -> str:
    return _job(job_id) + "index/feature-index.safetensors"


def labels_file(job_id: str) -> str:
    return _job(job_id) + "labels/labels.jsonl"


def partial_result(job_id: str, name: str) -> str:
    """A finished piece of a job not yet published (saeq_worker.partials): never named by a
    manifest, so never an output; a later attempt reads it back instead of redoing it."""
    if not _SAFE_NAME.match(name):
        raise ValueError(f"unsafe partial result name {name!r}")
    return _job(job_id) + f"partial/{name}"


def partial_prefix(job_id: str) -> str:
    return _job(job_id) + "partial/"


def feature_summaries(job_id: str) -> str:
    """The feature browser's list: one row per feature of a label job's SAE."""
    return _job(job_id) + "browser/features.json"


def feature_pages(job_id: str, chunk: int) -> str:
    """The feature browser's pages of features [chunk * CHUNK, (chunk + 1) * CHUNK)."""
    if chunk < 0:
        raise ValueError(f"chunk {chunk} < 0")
    return _job(job_id) + f"browser/pages-{chunk:05d}.json"


def upload_prefix(upload_id: str) -> str:
    if not _JOB_ID.match(upload_id):
        raise ValueError(f"not an upload id: {upload_id!r}")
    return f"uploads/{upload_id}/"


def upload(upload_id: str, filename: str) -> str:
    if not _SAFE_NAME.match(filename) or ".." in filename:
        raise ValueError(f"unsafe file name {filename!r}")
    return upload_prefix(upload_id) + filename


def llm_cache(digest: str) -> str:
    """A cached LLM response, by the sha256 of its request; fanned out so no directory gets huge."""
    if not _SHA256.match(digest):
        raise ValueError(f"not a sha256 hex digest: {digest!r}")
    return f"cache/llm/{digest[:2]}/{digest}.json"


def job_spec(job_id: str) -> str:
    """A large spec, kept out of the job's Redis record (saeq.platform.registry); deleted with the record."""
    _job(job_id)  # refuses anything but a job id
    return f"specs/{job_id}.json"


def job_of(key: str) -> str | None:
    """The job a key belongs to, or None."""
    parts = key.split("/")
    if len(parts) >= 3 and parts[0] == "jobs" and _JOB_ID.match(parts[1]):
        return parts[1]
    return None
