"""A label job whose worker is killed after it stored a chunk of features keeps that chunk: the
next attempt says how many it kept (a `resumed` event), labels only the rest, and its labels.jsonl
equals an uninterrupted run's. Real API, Redis, S3 and worker; an endpoint whose answers depend
on the prompt (so equal labels mean the same work, not a constant answer)."""

from __future__ import annotations

import hashlib
import json
import time

import pytest

from saeq import keys
from saeq.jobs.label import CHUNK_FEATURES
from saeq.specs import LabelSpec
from tests.fixtures_stack import make_stack
from tests.openai_server import OpenAIServer

pytestmark = pytest.mark.integration


def _answer(request: dict) -> str:
    """Labels and verdicts that are a function of the prompt; slow enough (a few ms a request)
    that a chunk of features takes a good part of a second, so the kill lands mid-job."""
    time.sleep(0.004)
    user = request["messages"][-1]["content"]
    digest = hashlib.sha256(user.encode()).hexdigest()
    if user.startswith("Excerpts:"):
        return f"Label: pattern {digest[:6]}\nDescription: The excerpts hashed to {digest[:12]}."
    return "Yes" if int(digest[0], 16) % 2 else "No"


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_srv, s3_srv):
    with OpenAIServer(_answer) as tiny:
        endpoints = {"tiny": {"base_url": tiny.base_url}}
        with make_stack(
            tmp_path_factory.mktemp("stack"), redis_srv, s3_srv, SAEQ_LLM_ENDPOINTS=json.dumps(endpoints)
        ) as st:
            yield st


def _spec(train_id: str) -> LabelSpec:
    return LabelSpec.model_validate(
        {
            "sae": {"job_id": train_id, "name": "topk"},
            "index_tokens": 4096,
            "n_most_active": 4 * CHUNK_FEATURES,
            "explainers": [{"backend": "openai", "endpoint": "tiny", "model": "m"}],
            "judge": {"backend": "openai", "endpoint": "tiny", "model": "m"},
            "scorers": ["detection", "fuzzing"],
            "n_explain_examples": 4,
            "n_score_examples": 4,
        }
    )


def _labels(client, job_id: str, dest) -> list[dict]:
    (path,) = client.download(job_id, dest, prefix="labels/")
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def test_a_killed_label_job_keeps_its_finished_chunks(stack, client_module, train_job, tmp_path):
    client = client_module
    spec = _spec(train_job["id"])
    job = client.submit(spec)
    prefix = keys.partial_prefix(job["id"])
    deadline = time.monotonic() + 300
    while not any(a["key"].startswith(prefix) for a in client.artifacts(job["id"])["artifacts"]):
        assert client.get(job["id"])["state"] in ("queued", "running"), "ended before a chunk was kept"
        assert time.monotonic() < deadline, "no chunk stored"
        time.sleep(0.05)
    stack.kill("worker")
    stored = [a["key"] for a in client.artifacts(job["id"])["artifacts"] if a["key"].startswith(prefix)]
    stack.respawn("worker")
    done = client.wait(job["id"], timeout=600)

    n_features = client.manifest(job["id"])["n_features"]
    n_chunks = -(-n_features // CHUNK_FEATURES)
    assert n_chunks >= 3, f"only {n_features} features: too few chunks to interrupt between"
    assert done["attempts"] == 2
    resumed = [e for e in client.events(job["id"]) if e["phase"] == "resumed"]
    assert len(resumed) == 1, resumed
    kept = resumed[0]["figures"]["chunks_kept"]
    assert len(stored) <= kept < n_chunks, (stored, kept)  # what was stored at the kill, at least; not all
    # Published: the labels and the index; the partial results are gone.
    assert not [a for a in client.artifacts(job["id"])["artifacts"] if a["key"].startswith(prefix)]

    reference = client.wait(client.submit(spec)["id"], timeout=600)
    assert reference["attempts"] == 1
    assert not [e for e in client.events(reference["id"]) if e["phase"] == "resumed"]
    ours, theirs = _labels(client, job["id"], tmp_path / "a"), _labels(client, reference["id"], tmp_path / "b")
    assert len(ours) == n_features and len({r["label"] for r in ours}) > 1
    assert ours == theirs
    assert client.manifest(job["id"])["summary"] == client.manifest(reference["id"])["summary"]
