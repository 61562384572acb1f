"""What the API refuses before a job exists: bodies over their size limit (413), LLM endpoints the
deployment does not list and local paths outside its roots (422 naming the field)."""

from __future__ import annotations

import contextlib
import json

import pytest
from fastapi.testclient import TestClient

from saeq.platform.settings import LlmEndpoint
from saeq_api.main import create_app

LABEL = {"kind": "label", "sae": {"job_id": "0" * 32}}


@pytest.fixture
def api_with(api, api_settings):
    """`api_with(**settings)`: a client of an API with some settings changed, on the same Redis and
    S3, sending what `api` sends (its key)."""
    with contextlib.ExitStack() as stack:
        yield lambda **changes: stack.enter_context(
            TestClient(create_app(api_settings.model_copy(update=changes)), headers=api.headers)
        )


def _refused(resp, status: int = 422) -> list[dict]:
    assert resp.status_code == status, resp.text
    return resp.json()["detail"]


def test_bodies_over_the_limit_get_413_naming_it(api_with):
    api = api_with(max_request_bytes=4096)
    spec = {"kind": "harvest", "max_tokens": 4096}
    assert api.post("/v1/jobs", json={"spec": spec, "name": "x" * 100}).status_code == 201
    big = json.dumps({"spec": spec, "name": "x" * 5000}).encode()

    declared = api.post("/v1/jobs", content=big, headers={"content-type": "application/json"})
    assert "4096 bytes" in _refused(declared, 413) and "max_request_bytes" in declared.json()["detail"]
    assert declared.headers["content-type"] == "application/problem+json"  # RFC 9457, like every error
    assert declared.json()["status"] == 413 and declared.json()["instance"] == "/v1/jobs"
    # Chunked: no Content-Length, so the bytes are counted as they arrive.
    streamed = api.post(
        "/v1/jobs", content=iter([big[:3000], big[3000:]]), headers={"content-type": "application/json"}
    )
    assert "content-length" not in streamed.request.headers
    assert "4096 bytes" in _refused(streamed, 413)
    assert len(api.get("/v1/jobs").json()["jobs"]) == 1


def test_uploads_keep_their_own_larger_limit(api_with):
    api = api_with(max_request_bytes=4096, max_upload_bytes=16 << 10)
    corpus = b"A document of some length.\n\n" * 300  # 8.4 KB: over max_request_bytes
    r = api.post("/v1/uploads", files={"file": ("corpus.txt", corpus, "text/plain")})
    assert r.status_code == 201, r.text
    r = api.post("/v1/uploads", files={"file": ("big.txt", corpus * 3, "text/plain")})
    assert "big.txt" in _refused(r, 413)  # the route's own check, naming the file
    r = api.post("/v1/uploads", files={"file": ("huge.txt", corpus * 30, "text/plain")})
    assert "max_upload_bytes" in _refused(r, 413)  # stopped before it is all read


def test_llm_endpoints_are_named_from_the_deployments_list(api_with):
    api = api_with(
        llm_endpoints={
            "vllm": LlmEndpoint(base_url="http://vllm:8000/v1"),
            "openai": LlmEndpoint(base_url="https://api.openai.com/v1", api_key_env="OPENAI_API_KEY"),
        }
    )
    explainers = [{"backend": "metadata"}, {"backend": "openai", "endpoint": "elsewhere", "model": "m"}]
    [d] = _refused(api.post("/v1/jobs", json={"spec": {**LABEL, "explainers": explainers}}))
    assert d["field"] == "spec.explainers.1.endpoint" and d["loc"] == ["body", "spec", "explainers", "1", "endpoint"]
    assert "'elsewhere'" in d["msg"] and "allowed: openai, vllm" in d["msg"]
    [d] = _refused(
        api.post("/v1/jobs", json={"spec": {**LABEL, "judge": {"backend": "openai", "endpoint": "nope", "model": "m"}}})
    )
    assert d["field"] == "spec.judge.endpoint"
    # Where requests go and which key they carry are the deployment's, never a spec's.
    for field, value in (("base_url", "http://attacker.example/v1"), ("api_key_env", "SAEQ_S3_SECRET_KEY")):
        judge = {"backend": "openai", "endpoint": "vllm", "model": "m", field: value}
        assert [d["field"] for d in _refused(api.post("/v1/jobs", json={"spec": {**LABEL, "judge": judge}}))] == [
            f"spec.judge.{field}"
        ]


def test_local_paths_must_lie_under_the_deployments_roots(api_with, tmp_path):
    models, elsewhere = tmp_path / "models", tmp_path / "home"
    (models / "llama").mkdir(parents=True)
    elsewhere.mkdir()
    (models / "link").symlink_to(elsewhere)
    api = api_with(local_path_roots=[str(models)])

    def harvest(model: str):
        return api.post(
            "/v1/jobs",
            json={"spec": {"kind": "harvest", "model": {"name": model}, "hooks": ["blocks.0.hook_resid_post"]}},
        )

    assert harvest(str(models / "llama")).status_code == 201
    assert harvest("HuggingFaceTB/SmolLM2-135M").status_code == 201  # a hub id is no path
    for outside in (elsewhere, models / "link" / "llama", "/etc"):
        [d] = _refused(harvest(str(outside)))
        assert d["field"] == "spec.model.name" and str(models) in d["msg"]
    imported = {
        "kind": "evaluate",
        "sae": {"source": "path", "path": str(elsewhere)},
        "model": {"name": str(models / "llama")},
        "hook": "blocks.0.hook_resid_post",
        "corpus": {"source": "builtin"},
    }
    assert [d["field"] for d in _refused(api.post("/v1/jobs", json={"spec": imported}))] == ["spec.sae.path"]
