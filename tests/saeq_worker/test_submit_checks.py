"""Checks against a referenced job's output, through the API and a real worker: made at submit once
that job has succeeded (422 naming the field, nothing queued), and by the worker, with the same quota
rules (saeq.specs.costs), when only the finished harvest tells what a job costs."""

from __future__ import annotations

import httpx
import pytest

from tests.saeq_worker.conftest import HOOK
from tests.tiny_model import save_tiny_llama

pytestmark = pytest.mark.integration


def _submit(stack, body: dict, key: str | None = None) -> httpx.Response:
    auth = {"Authorization": f"Bearer {key or stack.admin_key}"}
    return httpx.post(f"{stack.url}/v1/jobs", json=body, headers=auth, timeout=60)


def _refused(resp: httpx.Response) -> dict:
    assert resp.status_code == 422, resp.text[:500]
    return resp.json()["detail"][0]


def test_submit_refuses_what_a_succeeded_jobs_output_rules_out(stack, client_module, harvest_job, train_job):
    n_tokens = client_module.manifest(harvest_job["id"])["hooks"][HOOK]["n_tokens"]
    train = {
        "kind": "train",
        "activations": {"job_id": harvest_job["id"], "hook": HOOK},
        "saes": [{"d_sae": 64, "k": 4}],
        "batch_size": 512,
        "total_tokens": 4096,
    }
    d = _refused(_submit(stack, {"spec": {**train, "validation_tokens": n_tokens}}))
    assert d["field"] == "spec.validation_tokens" and f"holds {n_tokens:,} tokens" in d["msg"]
    sae = {"job_id": train_job["id"]}  # its one SAE has d_sae=256
    d = _refused(
        _submit(
            stack,
            {"spec": {"kind": "label", "sae": sae, "features": [3, 256], "judge": None, "scorers": ["embedding"]}},
        )
    )
    assert d["field"] == "spec.features.1" and "not in 0..255" in d["msg"]
    steer = {
        "kind": "steer",
        "sae": {**sae, "name": "topk"},
        "prompts": ["Hello"],
        "max_new_tokens": 4,
        "interventions": [{"edits": [{"feature": 0, "value": 1.0}, {"feature": 300, "value": 1.0}]}],
    }
    d = _refused(_submit(stack, {"spec": steer}))
    assert d["field"] == "spec.interventions.0.edits.1.feature" and "d_sae=256" in d["msg"]
    assert [j for j in client_module.list() if j["kind"] in ("label", "steer")] == []  # nothing was queued
    last = {**steer, "interventions": [{"edits": [{"feature": 255, "value": 1.0}]}]}
    ok = _submit(stack, {"spec": last})  # the last feature is in range
    assert ok.status_code == 201, ok.text[:500]
    client_module.cancel(ok.json()["id"])


def test_the_worker_checks_the_latents_quota_once_the_harvest_tells_d_in(stack, client_module, tmp_path):
    """At submit, a train job over an unfinished harvest of a local model has no d_in, so widths given as
    expansion factors are unknown; the worker refuses the job with the rule of the API."""
    admin = httpx.Client(base_url=stack.url, headers={"Authorization": f"Bearer {stack.admin_key}"}, timeout=60)
    created = admin.post("/v1/admin/keys", json={"team": "narrow", "name": "test"})
    assert created.status_code == 201, created.text
    key = created.json()["key"]
    assert admin.put("/v1/admin/teams/narrow/quota", json={"max_latents": 1000}).status_code == 200
    model_dir = save_tiny_llama(tmp_path / "tiny", n_layers=2, d_model=64)
    harvest = _submit(
        stack,
        {
            "spec": {
                "kind": "harvest",
                "model": {"name": str(model_dir)},
                "hooks": [HOOK],
                "max_tokens": 4096,
                "context_len": 64,
                "batch_size": 8,
            }
        },
        key,
    )
    assert harvest.status_code == 201, harvest.text[:500]
    h = harvest.json()["id"]
    # Two SAEs of 8 x 64 = 512 latents: each within max_latents=1,000, together 1,024 beyond it.
    two = {
        "kind": "train",
        "activations": {"job_id": h, "hook": HOOK},
        "batch_size": 512,
        "total_tokens": 2048,
        "validation_tokens": 512,
        "saes": [{"name": "a", "k": 4}, {"name": "b", "k": 4}],
    }
    train = _submit(stack, {"spec": two, "depends_on": [h]}, key)
    assert train.status_code == 201, train.text[:500]  # unknown at submit
    failed = client_module.wait(train.json()["id"], timeout=240, raise_on_failure=False)
    assert failed["state"] == "failed" and failed["error"]["code"] == "invalid_spec", failed["error"]
    assert failed["error"]["field"] == "spec.saes" and "1,024 latents" in failed["error"]["message"]
    assert client_module.artifacts(failed["id"])["artifacts"] == []  # no SAE was trained or stored
