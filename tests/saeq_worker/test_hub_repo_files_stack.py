"""A hub repository's own JSON cannot point a real worker's loader outside it (issue 15, round 2):
a harvest of a hub model whose weight_map names another team's shard fails, and reads nothing."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest

from tests.fixtures_stack import make_stack
from tests.tiny_model import save_tiny_llama

pytestmark = pytest.mark.integration

COMMIT = "c0ffee" * 6 + "abcd"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """The worker's hub cache holding `attacker/model`: a sharded tiny model whose weight_map names
    its first shard by an absolute path to another team's copy (the snapshot lacks that shard), and
    `me/model`, the same repository left as saved."""
    from transformers import AutoModelForCausalLM

    base = tmp_path_factory.mktemp("hub")
    tiny = save_tiny_llama(base / "tiny", n_layers=2, d_model=32)
    cache = base / "cache"
    for repo_id in ("attacker/model", "me/model"):
        snapshot = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / COMMIT
        AutoModelForCausalLM.from_pretrained(tiny).save_pretrained(snapshot, max_shard_size="40KB")
        for f in tiny.iterdir():
            if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
                shutil.copy(f, snapshot)
        (snapshot.parent.parent / "refs").mkdir()
        (snapshot.parent.parent / "refs" / "main").write_text(COMMIT)
    snapshot = cache / "models--attacker--model" / "snapshots" / COMMIT
    index = json.loads((snapshot / "model.safetensors.index.json").read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    (base / "team-b").mkdir()
    shutil.move(snapshot / first, base / "team-b" / first)
    index["weight_map"] = {k: str(base / "team-b" / first) if v == first else v for k, v in index["weight_map"].items()}
    (snapshot / "model.safetensors.index.json").write_text(json.dumps(index))
    return cache


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_srv, s3_srv, hub_cache):
    with make_stack(tmp_path_factory.mktemp("stack"), redis_srv, s3_srv, HF_HUB_CACHE=str(hub_cache)) as st:
        yield st


def test_a_hub_models_weight_map_cannot_make_the_worker_read_another_teams_shard(stack, hub_cache):
    from saeq.client.client import Client

    spec = {
        "kind": "harvest",
        "hooks": ["blocks.0.hook_resid_post"],
        "max_tokens": 256,
        "context_len": 32,
        "batch_size": 4,
        "shard_tokens": 128,
    }
    ids = {}
    for name in ("attacker/model", "me/model"):
        resp = httpx.post(
            f"{stack.url}/v1/jobs",
            json={"spec": {**spec, "model": {"name": name}}},
            timeout=60,
            headers={"Authorization": f"Bearer {stack.admin_key}"},
        )
        assert resp.status_code == 201, resp.text
        ids[name] = resp.json()["id"]
    with Client(stack.url, api_key=stack.admin_key, timeout=60) as client:
        job = client.wait(ids["attacker/model"], timeout=300, raise_on_failure=False)
        assert job["state"] == "failed", job
        assert job["error"]["code"] == "invalid_spec" and job["error"]["field"] == "spec.model.name", job
        assert "weight_map" in job["error"]["message"] and str(hub_cache.parent) not in job["error"]["message"]
        assert client.artifacts(job["id"])["artifacts"] == []
        # The same repository with its own file names harvests.
        assert client.wait(ids["me/model"], timeout=300, raise_on_failure=False)["state"] == "succeeded"
