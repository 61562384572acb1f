"""A crosscoder through a real stack: one harvest captures three layers' residual stream, the API
names activations.hooks when a crosscoder lacks them, and a worker trains a TopK crosscoder over
the three whose published result holds FVU per layer and per-layer decoder norms. A submitted
evaluate job splices it into the model at all three layers at once: its manifest says so and holds
CE loss recovered and KL with their intervals, FVU per layer and the decoder norms, equal to
saeq.jobs.evaluate_crosscoder in this process on the same contexts."""

from __future__ import annotations

import os

import pytest
import torch

from saeq.client.client import ApiError
from saeq.specs import ActivationsRef, BuiltinCorpus, EvaluateSpec, HarvestSpec, ModelSpec, SaeConfig, TrainSpec
from tests.tiny_model import save_tiny_llama

pytestmark = pytest.mark.integration

HOOKS = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post")
HELD_OUT = BuiltinCorpus(max_docs=400)  # text like the harvest's, in an order of its own (seed 7)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), n_layers=3, d_model=64)


@pytest.fixture(scope="module")
def layers_harvest(client_module, model_dir):
    spec = HarvestSpec(
        model=ModelSpec(name=str(model_dir)),
        hooks=list(HOOKS),
        max_tokens=8192,
        context_len=64,
        batch_size=8,
        shard_tokens=4096,
    )
    return client_module.wait(client_module.submit(spec)["id"], timeout=180)


def _spec(harvest_id: str, **activations) -> dict:
    spec = TrainSpec(
        activations=ActivationsRef(job_id=harvest_id, hooks=HOOKS),
        saes=[SaeConfig(name="cc", architecture="topk_crosscoder", d_sae=256, k=8)],
        batch_size=512,
        total_tokens=10_240,
        validation_tokens=2048,
    ).model_dump(mode="json")
    spec["activations"] |= activations  # as a user's JSON would say it, checked by the API only
    return spec


@pytest.fixture(scope="module")
def trained(client_module, layers_harvest):
    assert layers_harvest["state"] == "succeeded", layers_harvest
    return client_module.wait(client_module.submit(_spec(layers_harvest["id"]))["id"], timeout=600)


def test_the_api_names_hooks_when_a_crosscoder_has_one(client_module, layers_harvest):
    with pytest.raises(ApiError) as e:
        client_module.submit(_spec(layers_harvest["id"], hooks=[HOOKS[0]]))
    assert e.value.status == 422 and "spec.activations.hooks" in str(e.value)


def test_a_crosscoder_over_three_layers_reports_per_layer_fvu_and_decoder_norms(client_module, trained, tmp_path):
    client = client_module
    done = trained
    assert done["state"] == "succeeded", done
    manifest = client.manifest(done["id"])
    cc = manifest["saes"]["cc"]
    assert cc["architecture"] == "topk_crosscoder" and cc["metrics"]["d_in"] == 3 * 64, cc
    layers = manifest["result"]["layers"]["cc"]
    print("crosscoder:", layers)
    assert layers["hooks"] == list(HOOKS)
    assert len(layers["fvu_per_layer"]) == 3 and all(0 < v < 1 for v in layers["fvu_per_layer"]), layers
    assert abs(layers["fvu"] - cc["metrics"]["fvu"]) < 1e-3 and layers["l0"] <= 8
    shares = layers["decoder_norm_shares"]
    assert len(shares["single_layer_share"]) == 3
    assert sum(shares["single_layer_share"]) + shares["multi_layer_share"] == pytest.approx(1.0)
    assert manifest["result"]["data"]["hooks"] == list(HOOKS)

    from saeq.ml.sae import SparseAutoencoder, TopKCrosscoder

    files = client.download(done["id"], tmp_path, prefix="saes/cc/saelens/")
    loaded = SparseAutoencoder.load(files[0].parent)
    assert isinstance(loaded, TopKCrosscoder) and loaded.n_layers == 3


def _worker_threads() -> int:
    """As many torch threads as the stack's worker computes with (the same sums in the same order)."""
    from saeq_worker.threads import THREADS_ENV, available_cpus, parse_threads

    return parse_threads(os.environ.get(THREADS_ENV)) or available_cpus()


def test_the_evaluate_job_splices_every_layer_at_once(client_module, trained, layers_harvest, model_dir, tmp_path):
    client = client_module
    spec = EvaluateSpec.model_validate(
        {"sae": {"job_id": trained["id"], "name": "cc"}, "corpus": HELD_OUT.model_dump(), "seed": 7}
        | {"max_tokens": 2048, "batch_size": 8, "checks": None}
    )
    done = client.wait(client.submit(spec)["id"], timeout=300)
    manifest = client.manifest(done["id"])
    assert manifest["splice"] == {"kind": "crosscoder", "reads": list(HOOKS), "replaces": list(HOOKS)}
    m, ci, layers = manifest["metrics"], manifest["intervals"], manifest["layers"]
    print(f"crosscoder job: fvu {m['fvu']:.3f} per layer {layers['fvu_per_layer']} KL {m['kl_div_with_sae']:.2e}")
    assert 0 <= m["kl_div_with_sae"] < m["kl_div_with_ablation"] and m["l0"] <= 8, m
    for name in ("ce_loss_recovered", "kl_div_with_sae", "fvu"):
        assert ci[name]["n"] == 32 and ci[name]["low"] <= m[name] <= ci[name]["high"], (name, ci[name])
    assert layers["hooks"] == list(HOOKS) and len(layers["fvu_per_layer"]) == 3
    assert all(0 < v < 1 for v in layers["fvu_per_layer"]), layers
    for est, value in zip(layers["fvu_per_layer_intervals"], layers["fvu_per_layer"], strict=True):
        assert est["value"] == value and est["low"] <= value <= est["high"] and est["n"] == 32, est
    assert min(layers["fvu_per_layer"]) <= m["fvu"] <= max(layers["fvu_per_layer"])  # their pooled ratio
    shares = layers["decoder_norm_shares"]
    assert sum(shares["single_layer_share"]) + shares["multi_layer_share"] == pytest.approx(1.0)
    assert len(layers["decoder_norm_mean"]) == 3

    # The same contexts, sinks and crosscoder in this process: the in-process function agrees.
    from saeq.jobs.evaluate_crosscoder import evaluate_crosscoder
    from saeq.jobs.harvest import context_batches
    from saeq.ml.corpus import iter_documents
    from saeq.ml.models import load_model
    from saeq.ml.sae import SparseAutoencoder, TopKCrosscoder
    from saeq.ml.sinks import SinkReference

    files = client.download(trained["id"], tmp_path, prefix="saes/cc/saelens/")
    cc = SparseAutoencoder.load(files[0].parent)
    assert isinstance(cc, TopKCrosscoder)
    lm = load_model(ModelSpec(name=str(model_dir)), cache_dir=str(tmp_path / "cache"))
    sinks = client.manifest(layers_harvest["id"])["hooks"][HOOKS[0]]["sinks"]
    docs = iter_documents(HELD_OUT, seed=7)
    contexts = [ids for ids, _ in context_batches(docs, lm.tokenizer, context_len=64, max_tokens=2048, batch_size=8)]
    before = torch.get_num_threads()
    torch.set_num_threads(_worker_threads())
    try:
        r = evaluate_crosscoder(
            cc, lm, contexts, hooks=list(HOOKS), sinks=SinkReference(sinks["median_norm"], sinks["norm_factor"])
        )
    finally:
        torch.set_num_threads(before)
    pairs = {
        "fvu": "fvu",
        "ce_clean": "ce_loss_clean",
        "ce_crosscoder": "ce_loss_with_sae",
        "ce_zero": "ce_loss_with_ablation",
        "ce_loss_recovered": "ce_loss_recovered",
        "kl_crosscoder": "kl_div_with_sae",
        "kl_zero": "kl_div_with_ablation",
    }
    for mine, theirs in pairs.items():
        assert abs(r.metrics[mine] - m[theirs]) <= 1e-6, (mine, r.metrics[mine], m[theirs])
    assert r.fvu_per_layer == pytest.approx(layers["fvu_per_layer"], abs=1e-6)
    assert r.counts["sinks_excluded"] == manifest["counts"]["n_sinks_excluded"] >= 32


def test_checks_read_a_crosscoders_features_from_all_its_layers(client_module, trained):
    checks = {
        "n_docs": 32,
        "context_len": 32,
        "specificity": None,
        "sensitivity": {"n_pairs": 8, "max_doc_share": 0.25},
        "probing": {"ks": [1, 5], "min_per_class": 4},
    }
    spec = EvaluateSpec.model_validate({"sae": {"job_id": trained["id"]}, "max_tokens": 512, "checks": checks})
    done = client_module.wait(client_module.submit(spec)["id"], timeout=300)
    summary = client_module.manifest(done["id"])["checks"]
    elements = summary["completeness"]["chemical elements"]
    assert elements["n_members"] == 96 and 0 <= elements["n_covered"] <= 96
    assert summary["probing"]["n_topics"] >= 1 and set(summary["probing"]["sae"]) == {"1", "5"}
    # probed on the crosscoder's features and on the raw rows it reads (the three layers side by side)
    assert set(summary["probing"]["raw"]) == {"1", "5", "all"}
    assert set(summary["sensitivity"]) == {"fr", "es"} and summary["sensitivity"]["fr"]["n_features"] > 0
