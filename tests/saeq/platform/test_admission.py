"""What a deployment lets a spec name: LLM endpoints by name, local paths under its roots, checked
the same way by the API and the worker (saeq.platform.admission)."""

from __future__ import annotations

import json

import pytest

from saeq.errors import InvalidSpec
from saeq.platform.admission import check_admissible, check_local_paths, resolve_endpoint
from saeq.platform.settings import LlmEndpoint, PlatformSettings
from saeq.specs import EvaluateSpec, LabelSpec

ENDPOINTS = {
    "vllm": LlmEndpoint(base_url="http://vllm:8000/v1"),
    "openai": LlmEndpoint(base_url="https://api.openai.com/v1", api_key_env="OPENAI_API_KEY"),
}
SAE = {"job_id": "0" * 32}


def _refused(call) -> InvalidSpec:
    with pytest.raises(InvalidSpec) as e:
        call()
    return e.value


def test_the_setting_is_read_from_json_in_the_environment(monkeypatch):
    monkeypatch.setenv(
        "SAEQ_LLM_ENDPOINTS",
        json.dumps(
            {
                "vllm": {"base_url": "http://vllm:8000/v1"},
                "openai": {"base_url": "https://api.openai.com/v1", "api_key_env": "OPENAI_API_KEY"},
            }
        ),
    )
    monkeypatch.setenv("SAEQ_LOCAL_PATH_ROOTS", '["/models", "/saes"]')
    s = PlatformSettings()
    assert s.llm_endpoints == ENDPOINTS and s.local_path_roots == ["/models", "/saes"]
    assert PlatformSettings.model_fields["local_path_roots"].default == []  # none unless a deployment says
    for bad in (
        {"vllm": {"base_url": "file:///etc/passwd"}},
        {"Bad Name": {"base_url": "http://x"}},
        {"vllm": {"base_url": "http://x", "api_key": "sk-..."}},
    ):
        monkeypatch.setenv("SAEQ_LLM_ENDPOINTS", json.dumps(bad))
        with pytest.raises(ValueError):
            PlatformSettings()


def test_endpoints_are_resolved_by_name_and_unknown_names_name_the_field():
    spec = LabelSpec(
        sae=SAE,
        explainers=[{"backend": "metadata"}, {"backend": "openai", "endpoint": "openai", "model": "gpt-4o-mini"}],
        judge={"backend": "openai", "endpoint": "vllm", "model": "qwen"},
    )
    assert resolve_endpoint(spec.judge, ENDPOINTS, "spec.judge").base_url == "http://vllm:8000/v1"
    check_admissible(spec, llm_endpoints=ENDPOINTS, local_path_roots=["/"])

    e = _refused(lambda: check_admissible(spec, llm_endpoints={"vllm": ENDPOINTS["vllm"]}, local_path_roots=["/"]))
    assert e.field == "spec.explainers.1.endpoint" and e.code == "invalid_spec"
    assert "'openai'" in e.message and "allowed: vllm" in e.message
    e = _refused(lambda: check_admissible(spec, llm_endpoints={}, local_path_roots=["/"]))
    assert "SAEQ_LLM_ENDPOINTS" in e.message

    checks = EvaluateSpec(
        sae=SAE,
        checks={
            "label_job": "1" * 32,
            "specificity": {"judge": {"backend": "openai", "endpoint": "gone", "model": "m"}},
        },
    )
    e = _refused(lambda: check_admissible(checks, llm_endpoints=ENDPOINTS, local_path_roots=["/"]))
    assert e.field == "spec.checks.specificity.judge.endpoint"


def test_local_paths_must_lie_under_the_roots_after_resolving_links(tmp_path):
    models, secrets = tmp_path / "models", tmp_path / "secrets"
    (models / "llama").mkdir(parents=True)
    secrets.mkdir()
    (models / "escape").symlink_to(secrets)
    roots = [str(models)]

    inside = EvaluateSpec(
        sae={"source": "path", "path": str(models / "llama")},
        model={"name": str(models / "llama")},
        hook="blocks.0.hook_resid_post",
        corpus={"source": "builtin"},
    )
    check_local_paths(inside, roots)

    outside = inside.model_copy(update={"model": inside.model.model_copy(update={"name": str(secrets)})})
    e = _refused(lambda: check_local_paths(outside, roots))
    assert e.field == "spec.model.name" and str(models) in e.message

    linked = inside.model_copy(update={"sae": inside.sae.model_copy(update={"path": str(models / "escape")})})
    e = _refused(lambda: check_local_paths(linked, roots))
    assert e.field == "spec.sae.path" and f"resolved: {secrets}" in e.message

    gguf = inside.model_copy(update={"model": inside.model.model_copy(update={"gguf_file": "../../secrets/x.gguf"})})
    assert _refused(lambda: check_local_paths(gguf, roots)).field == "spec.model.gguf_file"
    # A root that is itself a link is resolved too; hub ids and builtin models are no paths.
    (tmp_path / "models-link").symlink_to(models)
    check_local_paths(inside, [str(tmp_path / "models-link")])
    check_local_paths(LabelSpec(sae=SAE), [])
