"""Harvest jobs end to end: HTTP API (uvicorn) -> Redis broker -> real Celery worker -> S3
(SeaweedFS), driven through the Python client as a user would."""

from __future__ import annotations

import hashlib
import time

import httpx
import pytest
import torch

from saeq import keys
from saeq.ml.shards import read_shard
from saeq.specs import HarvestSpec, ModelSpec
from tests.helpers import wait_for
from tests.tiny_model import save_tiny_llama

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), n_layers=3, d_model=64)


def _shard(url: str) -> dict[str, torch.Tensor]:
    return read_shard(httpx.get(url, timeout=30).content)


def test_harvest_matches_a_direct_forward_pass(client, tiny_model_dir):
    hooks = ["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out"]
    spec = HarvestSpec(
        model=ModelSpec(name=str(tiny_model_dir)),
        hooks=hooks,
        max_tokens=3000,
        context_len=64,
        batch_size=4,
        shard_tokens=1024,
        dtype="float32",  # fp32 on request: compared with a direct fp32 forward pass below
    )
    job = client.wait(client.submit(spec)["id"], timeout=180)
    assert job["state"] == "succeeded" and job["attempts"] == 1
    assert job["progress"]["fraction"] == 1.0 and job["progress"]["figures"]["tokens"] == 3008

    manifest = client.manifest(job["id"])
    assert manifest["n_tokens"] == 3008  # 3000 rounded up to whole contexts of 64
    arts = {a["key"]: a for a in client.artifacts(job["id"])["artifacts"]}
    assert job["manifest_key"] in arts

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    captured = {}
    model.model.layers[0].mlp.register_forward_hook(lambda m, a, out: captured.update(mlp=out))
    for hook in hooks:
        info = manifest["hooks"][hook]
        assert info["d_model"] == 64 and [s["index"] for s in info["shards"]] == [0, 1, 2]
        assert sum(s["n_tokens"] for s in info["shards"]) == 3008
        for s in info["shards"]:
            data = httpx.get(arts[s["key"]]["url"], timeout=30).content
            assert hashlib.sha256(data).hexdigest() == s["sha256"] and len(data) == s["size"]
    # Every context of shard 1, through the model directly.
    shard = {h: _shard(arts[manifest["hooks"][h]["shards"][1]["key"]]["url"]) for h in hooks}
    ids_BT = shard[hooks[0]]["token_ids"].long().reshape(-1, 64)
    assert (shard[hooks[0]]["positions"].reshape(-1, 64) == torch.arange(64)).all()
    with torch.no_grad():
        out = model(ids_BT, output_hidden_states=True)
    torch.testing.assert_close(shard[hooks[0]]["acts"], out.hidden_states[2].reshape(-1, 64), atol=1e-5, rtol=0)
    torch.testing.assert_close(shard[hooks[1]]["acts"], captured["mlp"].reshape(-1, 64), atol=1e-5, rtol=0)
    torch.testing.assert_close(
        shard[hooks[0]]["norms"], out.hidden_states[2].reshape(-1, 64).norm(dim=-1), atol=1e-4, rtol=1e-5
    )
    phases = [e["phase"] for e in client.events(job["id"])]
    assert phases[0] == "queued" and "running" in phases and phases[-1] == "succeeded"


def test_failures_name_the_field(client, tiny_model_dir):
    # Missing, but under the stack's local-path root: the worker's lookup fails, not the API's check.
    missing = client.submit(HarvestSpec(model=ModelSpec(name=str(tiny_model_dir / "no-such-model"))))
    deep = client.submit(HarvestSpec(model=ModelSpec(name=str(tiny_model_dir)), hooks=["blocks.7.hook_resid_post"]))
    hub = client.submit(HarvestSpec(model=ModelSpec(name="no-such-org/no-such-model")))
    dataset = client.submit(
        {
            "kind": "harvest",
            "model": {"name": str(tiny_model_dir)},
            "hooks": ["blocks.0.hook_resid_post"],
            "corpus": {"source": "hf", "dataset": "no-such-org/no-such-dataset"},
        }
    )
    for job_id, code, field in [
        (missing["id"], "not_found", "spec.model.name"),
        (deep["id"], "invalid_spec", "spec.hooks[0]"),
        (hub["id"], "not_found", "spec.model.name"),
        (dataset["id"], "not_found", "spec.corpus.dataset"),
    ]:
        job = client.wait(job_id, timeout=120, raise_on_failure=False)
        assert job["state"] == "failed", job
        assert (job["error"]["code"], job["error"]["field"]) == (code, field), job["error"]
        assert client.artifacts(job_id)["artifacts"] == []


def test_harvest_an_uploaded_corpus(client, tiny_model_dir, tmp_path):
    corpus = tmp_path / "notes.jsonl"
    corpus.write_text(
        "\n".join(f'{{"text": "Note {i}: the quick brown fox jumps over the lazy dog."}}' for i in range(200))
    )
    upload = client.upload(corpus)
    assert upload["n_documents"] == 200
    spec = {
        "kind": "harvest",
        "model": {"name": str(tiny_model_dir)},
        "context_len": 32,
        "corpus": {"source": "upload", "upload_id": upload["upload_id"]},
        "max_tokens": 100_000,
        "hooks": ["blocks.2.hook_resid_post"],
    }
    job = client.wait(client.submit(spec)["id"], timeout=120)
    manifest = client.manifest(job["id"])
    # The whole corpus, cut into whole contexts: far fewer tokens than the budget.
    assert 0 < manifest["n_tokens"] < 100_000 and manifest["n_tokens"] % 32 == 0
    assert manifest["corpus"]["n_docs_used"] >= 190


SLOW = dict(max_tokens=12 * 1024, shard_tokens=1024, context_len=128, batch_size=4)


def test_cancel_a_running_harvest(client):
    job = client.submit(HarvestSpec(**SLOW))
    wait_for(lambda: client.get(job["id"])["progress"]["figures"].get("tokens", 0) > 0, 120, "harvest to run")
    t0 = time.monotonic()
    assert client.cancel(job["id"])["cancel_requested"]
    done = client.wait(job["id"], timeout=30, raise_on_failure=False)
    assert done["state"] == "cancelled" and done["error"]["code"] == "cancelled"
    assert time.monotonic() - t0 < 10
    assert not client.artifacts(job["id"])["published"]


def test_killed_worker_job_continues_without_torn_or_duplicate_shards(stack, client):
    job = client.submit(HarvestSpec(**SLOW))
    hook = "blocks.14.hook_resid_post"
    arts = lambda: [a["key"] for a in client.artifacts(job["id"])["artifacts"]]
    wait_for(lambda: len(arts()) >= 3, 180, "three shards")
    stack.kill("worker")  # SIGKILL, whole process group: no chance to clean up
    written_before = set(arts())
    stack.respawn("worker")
    done = client.wait(job["id"], timeout=240)
    assert done["attempts"] == 2
    manifest = client.manifest(job["id"])
    shards = manifest["hooks"][hook]["shards"]
    assert [s["index"] for s in shards] == list(range(12))
    assert sum(s["n_tokens"] for s in shards) == 12 * 1024
    expected = {keys.harvest_shard(job["id"], hook, i) for i in range(12)} | {keys.manifest(job["id"])}
    by_key = {a["key"]: a for a in client.artifacts(job["id"])["artifacts"]}
    assert set(by_key) == expected and written_before <= expected
    for s in shards:
        assert hashlib.sha256(httpx.get(by_key[s["key"]]["url"], timeout=30).content).hexdigest() == s["sha256"]
    events = [e["phase"] for e in client.events(job["id"])]
    assert "requeued" in events and "resumed" in events


def test_jobs_survive_an_api_restart(stack, client):
    job = client.submit(HarvestSpec(max_tokens=256, shard_tokens=256))
    stack.kill("api")
    stack.respawn("api")
    assert client.get(job["id"])["id"] == job["id"]
    assert client.wait(job["id"], timeout=120)["state"] == "succeeded"


def test_job_fails_as_worker_lost_when_attempts_run_out(tmp_path, redis_srv, s3_srv):
    from saeq.client.client import Client
    from tests.fixtures_stack import make_stack

    with (
        make_stack(tmp_path, redis_srv, s3_srv, SAEQ_MAX_ATTEMPTS="1") as st,
        Client(st.url, api_key=st.admin_key) as c,
    ):
        job = c.submit(HarvestSpec(**SLOW))
        wait_for(lambda: c.get(job["id"])["progress"]["figures"].get("tokens", 0) > 0, 120, "harvest to run")
        st.kill("worker")
        st.respawn("worker")
        done = c.wait(job["id"], timeout=60, raise_on_failure=False)
        assert done["state"] == "failed" and done["error"]["code"] == "worker_lost", done
        assert "max_attempts=1" in done["error"]["message"]
        assert not c.artifacts(job["id"])["published"]
