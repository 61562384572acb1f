"""Harvest -> train -> evaluate as chained jobs through the API, a real worker, Redis and S3."""

from __future__ import annotations

import re
import time

import pytest
import torch

from saeq import keys
from saeq.client.client import ApiError
from saeq.specs import EvaluateSpec, HarvestSpec, SaeConfig, TrainedSae, TrainSpec
from saeq.specs.metrics import HEADLINE
from tests.helpers import import_peer
from tests.saeq_worker.conftest import HOOK

pytestmark = pytest.mark.integration


def _train_spec(harvest_id: str, **kw) -> TrainSpec:
    return TrainSpec(
        activations={"job_id": harvest_id, "hook": HOOK},
        saes=[
            SaeConfig(name="topk", architecture="topk", d_sae=512, k=8),
            SaeConfig(name="relu", architecture="relu", d_sae=256),
        ],
        batch_size=512,
        validation_tokens=2048,
        **kw,
    )


def _download_saelens(client, train_id: str, name: str, dest) -> torch.nn.Module:
    sae_lens = import_peer("sae_lens")
    files = client.download(train_id, dest, prefix=f"saes/{name}/saelens/")
    assert {p.name for p in files} == {"cfg.json", "sae_weights.safetensors"}
    return sae_lens.SAE.load_from_disk(str(files[0].parent), device="cpu")


def test_chain_train_then_evaluate(client_module, harvest_job, tmp_path):
    client = client_module
    train = client.submit(_train_spec(harvest_job["id"], total_tokens=60_000))
    evaluate = client.submit(
        EvaluateSpec(sae=TrainedSae(job_id=train["id"], name="topk"), max_tokens=2048), depends_on=[train["id"]]
    )
    assert client.get(evaluate["id"])["state"] == "queued"
    done = client.wait(train["id"], timeout=300)
    figures = done["progress"]["figures"]
    assert 0 < figures["fvu"] < 1 and figures["l0"] == pytest.approx(8, abs=0.01)
    # `saeq logs` shows the done message: each figure with its interval and n.
    num = r"\d+\.\d+"
    line = rf"FVU {num} \[{num}, {num}\] \(n=32 contexts\), L0 {num} \[{num}, {num}\] \(n=32 contexts\), dead {num}% \["
    assert re.match(line, done["progress"]["message"]), done["progress"]["message"]
    manifest = client.manifest(train["id"])
    assert set(manifest["saes"]) == {"topk", "relu"}
    assert manifest["result"]["data"]["sinks"]["train"]["n_position0"] > 0  # sinks were left out, and counted
    assert manifest["saes"]["relu"]["sparsify"] is None  # sparsify's format holds TopK SAEs only
    # Each held-out figure has its 95% interval, over the 2048 / 64 held-out contexts or the latents.
    for name, sae in manifest["result"]["saes"].items():
        for key, ci in sae["intervals"].items():
            assert ci["value"] == pytest.approx(sae[key]) and ci["low"] <= sae[key] <= ci["high"], (name, key, ci)
        assert (sae["intervals"]["fvu"]["n"], sae["intervals"]["fvu"]["unit"]) == (32, "contexts")
        assert sae["intervals"]["fvu"]["low"] < sae["intervals"]["fvu"]["high"]
        assert sae["intervals"]["dead_fraction"]["n"] == manifest["saes"][name]["d_sae"]

    theirs = _download_saelens(client, train["id"], "topk", tmp_path)
    assert theirs.cfg.d_in == 64 and theirs.cfg.d_sae == 512

    report = client.wait(evaluate["id"], timeout=300)
    ev = client.manifest(report["id"])
    m = ev["metrics"]
    assert ev["metrics_version"] == "saeq.metrics/1" and ev["saeq_version"]
    assert ev["sae"]["job_id"] == train["id"] and ev["hook"] == HOOK
    assert 0 < m["fvu"] < 1 and m["l0"] == pytest.approx(8, abs=0.01)
    assert m["ce_loss_recovered"] == m["ce_loss_recovered"]  # a number, not NaN
    assert ev["counts"]["n_sinks_excluded"] > 0
    # Each figure has its 95% interval over the evaluated contexts, around the figure itself.
    for key, _, _ in HEADLINE:
        ci = ev["intervals"][key]
        assert ci["value"] == m[key] and ci["low"] <= m[key] <= ci["high"], (key, ci)
        n_units = (
            (manifest["saes"]["topk"]["d_sae"], "latents")
            if "fraction" in key
            else (ev["counts"]["n_contexts"], "contexts")
        )
        assert (ci["n"], ci["unit"]) == n_units, (key, ci)
    assert ev["intervals"]["fvu"]["high"] > ev["intervals"]["fvu"]["low"]
    arts = {a["key"] for a in client.artifacts(report["id"])["artifacts"]}
    for name in ("metrics.json", "report.md", "feature_density.png", "l0_histogram.png", "fvu_by_position.png"):
        assert keys.report_file(report["id"], name) in arts


def test_bad_references_are_refused_at_submit(client_module, harvest_job):
    client = client_module
    with pytest.raises(ApiError) as e:
        client.submit(_train_spec("0" * 32))
    assert e.value.status == 422 and "spec.activations.job_id" in str(e.value)
    with pytest.raises(ApiError) as e:
        client.submit(TrainSpec(activations={"job_id": harvest_job["id"], "hook": "blocks.0.hook_mlp_out"}))
    assert "spec.activations.hook" in str(e.value)
    with pytest.raises(ApiError) as e:
        client.submit(EvaluateSpec(sae=TrainedSae(job_id=harvest_job["id"])))
    assert "is a harvest job, not a train job" in str(e.value)
    running = client.submit(
        HarvestSpec(model=harvest_job["spec"]["model"], hooks=[HOOK], max_tokens=64, context_len=64)
    )
    with pytest.raises(ApiError) as e:
        client.submit(_train_spec(running["id"]))
    assert "depends_on" in str(e.value)
    client.wait(running["id"], timeout=120)


def test_killed_training_resumes_to_the_same_weights(stack, client_module, harvest_job, tmp_path):
    client = client_module
    spec = _train_spec(harvest_job["id"], total_tokens=400_000, checkpoint_every_tokens=40_960)
    reference = client.wait(client.submit(spec)["id"], timeout=600)
    job = client.submit(spec)
    prefix = keys.checkpoint_prefix(job["id"])
    deadline = time.monotonic() + 300
    while not any(a["key"].startswith(prefix) for a in client.artifacts(job["id"])["artifacts"]):
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.2)
    stack.kill("worker")
    stack.respawn("worker")
    done = client.wait(job["id"], timeout=600)
    assert done["attempts"] == 2
    assert "resumed" in [e["phase"] for e in client.events(job["id"])]
    a = _download_saelens(client, reference["id"], "topk", tmp_path / "a")
    b = _download_saelens(client, job["id"], "topk", tmp_path / "b")
    for name, tensor in a.state_dict().items():
        diff = (b.state_dict()[name] - tensor).abs().max().item()
        assert diff <= 1e-6, (name, diff)
    assert client.manifest(job["id"])["result"]["tokens"] == client.manifest(reference["id"])["result"]["tokens"]


def test_imported_sae_is_evaluated_and_a_wrong_d_in_fails_clearly(client_module, harvest_job, tmp_path):
    from saeq.ml.sae import SparseAutoencoder

    client = client_module
    model = harvest_job["spec"]["model"]
    common = {
        "model": model,
        "hook": HOOK,
        "max_tokens": 1024,
        "sinks": {"exclude": False},
        "corpus": {"source": "builtin", "name": "wiki-en", "first_doc": 5000},
    }
    SparseAutoencoder(64, 256, "topk", k=4).save(tmp_path / "good", format="sparsify")
    SparseAutoencoder(48, 256, "topk", k=4).save(tmp_path / "bad", format="saelens")
    good = client.submit(EvaluateSpec(sae={"source": "path", "path": str(tmp_path / "good")}, **common))
    bad = client.submit(EvaluateSpec(sae={"source": "path", "path": str(tmp_path / "bad")}, **common))
    assert client.wait(good["id"], timeout=120)["progress"]["figures"]["l0"] == pytest.approx(4, abs=0.01)
    failed = client.wait(bad["id"], timeout=120, raise_on_failure=False)
    assert failed["state"] == "failed" and failed["error"]["code"] == "invalid_spec"
    assert failed["error"]["field"] == "spec.sae" and "d_in=48" in failed["error"]["message"]


def test_seeds_train_in_one_job_and_the_manifest_gives_their_spread(client_module, harvest_job):
    client = client_module
    spec = TrainSpec(
        activations={"job_id": harvest_job["id"], "hook": HOOK},
        saes=[SaeConfig(name="topk", d_sae=256, k=8)],
        seeds=[1, 2],
        batch_size=512,
        total_tokens=10_240,
        validation_tokens=2048,
        checkpoint_every_tokens=None,
    )
    bad = spec.model_dump(mode="json") | {"seeds": [3, 3]}
    with pytest.raises(ApiError) as e:
        client.submit(bad)
    assert e.value.status == 422 and "spec.seeds.1" in str(e.value) and "given twice" in str(e.value)
    done = client.wait(client.submit(spec)["id"], timeout=300)
    assert done["state"] == "succeeded", done["error"]
    manifest = client.manifest(done["id"])
    assert list(manifest["saes"]) == ["topk-seed1", "topk-seed2"]
    fvus = [manifest["saes"][n]["metrics"]["fvu"] for n in ("topk-seed1", "topk-seed2")]
    spread = manifest["result"]["seed_spread"]["topk"]
    assert spread["seeds"] == [1, 2] and spread["fvu"]["n"] == 2 and fvus[0] != fvus[1]
    assert (spread["fvu"]["min"], spread["fvu"]["max"]) == (min(fvus), max(fvus))
    with pytest.raises(ApiError) as e:  # the SAEs are named per seed
        client.submit(EvaluateSpec(sae=TrainedSae(job_id=done["id"], name="topk")))
    assert e.value.status == 422 and "topk-seed1" in str(e.value)
