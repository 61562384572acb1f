"""An online train job through the API, a real worker, Redis and S3: it reads a tiny Llama by path,
stores nothing but its SAEs and checkpoints, and an evaluate job of its SAE finds the model, hook,
context and held-out corpus through its manifest, as for a stored harvest."""

from __future__ import annotations

import pytest

from saeq import keys
from saeq.specs import EvaluateSpec, ModelSpec, OnlineActivations, SaeConfig, TrainedSae, TrainSpec
from tests.saeq_worker.conftest import HOOK
from tests.tiny_model import save_tiny_llama

pytestmark = pytest.mark.integration


def test_online_train_then_evaluate(client_module, tmp_path_factory):
    client = client_module
    model_dir = save_tiny_llama(tmp_path_factory.mktemp("tiny-llama-online"), n_layers=3, d_model=64)
    spec = TrainSpec(
        activations=OnlineActivations(
            source="online", model=ModelSpec(name=str(model_dir)), hook=HOOK, context_len=64, batch_size=8
        ),
        saes=[SaeConfig(name="topk", d_sae=256, k=8)],
        batch_size=512,
        total_tokens=10_240,
        shuffle_tokens=4096,
        validation_tokens=2048,
        checkpoint_every_tokens=4096,
    )
    train = client.submit(spec)
    evaluate = client.submit(
        EvaluateSpec(sae=TrainedSae(job_id=train["id"]), max_tokens=2048), depends_on=[train["id"]]
    )
    done = client.wait(train["id"], timeout=300)
    assert 0 < done["progress"]["figures"]["fvu"] < 1
    manifest = client.manifest(train["id"])
    assert manifest["harvest"]["job_id"] == train["id"] and manifest["harvest"]["context_len"] == 64
    assert manifest["harvest"]["corpus"]["n_docs_used"] > 0
    assert manifest["result"]["data"]["source"] == "online" and manifest["result"]["tokens"] == 10_240
    assert manifest["result"]["data"]["sinks"]["train"]["n_position0"] > 0  # sinks were left out, and counted
    stored = {a["key"] for a in client.artifacts(train["id"])["artifacts"]}
    assert keys.sae_file(train["id"], "topk", "saelens", "cfg.json") in stored
    kept = (keys.sae_prefix(train["id"], "topk", "saelens"), keys.sae_prefix(train["id"], "topk", "sparsify"))
    kept += (keys.checkpoint_prefix(train["id"]), keys.manifest(train["id"]))
    assert all(k.startswith(kept) for k in stored), stored  # no activation was stored

    report = client.wait(evaluate["id"], timeout=300)
    ev = client.manifest(report["id"])
    assert ev["hook"] == HOOK and ev["sae"]["job_id"] == train["id"]
    assert 0 < ev["metrics"]["fvu"] < 1
