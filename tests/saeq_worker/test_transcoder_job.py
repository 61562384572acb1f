"""A transcoder through a real stack: one harvest captures the MLP's input and output, the API
names activations.target_hook when a transcoder lacks it, a worker trains a TopK skip-transcoder
on the pairs, its sparsify export loads in sparsify with saeq's outputs, and a submitted evaluate
job splices it in place of the MLP: its manifest says so and holds CE loss recovered and KL with
their intervals, equal to saeq.jobs.evaluate_transcoder in this process on the same contexts. The
checks read its features from its input hook; compare_with, which compares plain SAEs, and absorption
(decoder directions in the input hook's space) are refused naming the field."""

from __future__ import annotations

import os

import pytest
import torch

from saeq.client.client import ApiError, JobFailed
from saeq.specs import ActivationsRef, BuiltinCorpus, EvaluateSpec, HarvestSpec, ModelSpec, SaeConfig, TrainSpec
from tests.helpers import import_peer
from tests.tiny_model import save_tiny_llama

pytestmark = pytest.mark.integration

HOOK, TARGET = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"
HELD_OUT = BuiltinCorpus(max_docs=400)  # text like the harvest's, in an order of its own (seed 7)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), n_layers=3, d_model=64)


@pytest.fixture(scope="module")
def pair_harvest(client_module, model_dir):
    spec = HarvestSpec(
        model=ModelSpec(name=str(model_dir)),
        hooks=[HOOK, TARGET],
        max_tokens=12_288,
        context_len=64,
        batch_size=8,
        shard_tokens=4096,
    )
    return client_module.wait(client_module.submit(spec)["id"], timeout=180)


def _spec(harvest_id: str, **activations) -> dict:
    spec = TrainSpec(
        activations=ActivationsRef(job_id=harvest_id, hook=HOOK, target_hook=TARGET),
        saes=[SaeConfig(name="tc", architecture="topk_skip_transcoder", d_sae=256, k=8)],
        batch_size=512,
        total_tokens=15_360,
        validation_tokens=2048,
    ).model_dump(mode="json")
    spec["activations"] |= activations  # as a user's JSON would say it, checked by the API only
    return spec


@pytest.fixture(scope="module")
def trained(client_module, pair_harvest):
    assert pair_harvest["state"] == "succeeded", pair_harvest
    return client_module.wait(client_module.submit(_spec(pair_harvest["id"]))["id"], timeout=600)


def test_the_api_names_target_hook_when_a_transcoder_has_none(client_module, pair_harvest):
    with pytest.raises(ApiError) as e:
        client_module.submit(_spec(pair_harvest["id"], target_hook=None))
    assert e.value.status == 422 and "spec.activations.target_hook" in str(e.value)


def test_a_transcoder_trains_on_two_hooks_and_exports_to_sparsify(client_module, trained, tmp_path):
    sparsify = import_peer("sparsify")
    client = client_module
    assert trained["state"] == "succeeded", trained
    tc = client.manifest(trained["id"])["saes"]["tc"]
    assert tc["architecture"] == "topk_skip_transcoder" and 0 < tc["metrics"]["fvu"] < 1, tc

    files = client.download(trained["id"], tmp_path, prefix="saes/tc/sparsify/")
    folder = files[0].parent.resolve()
    theirs = sparsify.SparseCoder.load_from_disk(folder)
    assert theirs.cfg.transcode and theirs.cfg.skip_connection
    from saeq.ml.sae import SparseAutoencoder, TopKSkipTranscoder

    ours = SparseAutoencoder.load(folder)
    assert isinstance(ours, TopKSkipTranscoder)
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).sae_out, ours.transcode(x), atol=1e-5, rtol=1e-5)


def _worker_threads() -> int:
    """As many torch threads as the stack's worker computes with (the same sums in the same order)."""
    from saeq_worker.threads import THREADS_ENV, available_cpus, parse_threads

    return parse_threads(os.environ.get(THREADS_ENV)) or available_cpus()


def test_the_evaluate_job_replaces_the_mlp_with_the_transcoder(
    client_module, trained, pair_harvest, model_dir, tmp_path
):
    client = client_module
    spec = EvaluateSpec.model_validate(
        {"sae": {"job_id": trained["id"], "name": "tc"}, "corpus": HELD_OUT.model_dump(), "seed": 7}
        | {"max_tokens": 2048, "batch_size": 8, "checks": None}
    )
    done = client.wait(client.submit(spec)["id"], timeout=300)
    manifest = client.manifest(done["id"])
    assert manifest["splice"] == {"kind": "transcoder", "reads": [HOOK], "replaces": [TARGET]}
    assert manifest["hook"] == HOOK and manifest["sae"]["architecture"] == "topk_skip_transcoder"
    m, ci = manifest["metrics"], manifest["intervals"]
    print(f"transcoder job: fvu {m['fvu']:.3f} CE recovered {m['ce_loss_recovered']:.3f} KL {m['kl_div_with_sae']:.2e}")
    assert 0 < m["fvu"] < 1 and 0 <= m["kl_div_with_sae"] < m["kl_div_with_ablation"], m
    for name in ("ce_loss_recovered", "kl_div_with_sae", "fvu"):
        assert ci[name]["n"] == 32 and ci[name]["unit"] == "contexts", ci[name]  # 2048 tokens / 64
        assert ci[name]["low"] <= m[name] <= ci[name]["high"], (name, ci[name])
    assert manifest["counts"]["n_sinks_excluded"] >= 32  # position 0 of every context, kept clean

    # The same contexts, sinks and transcoder in this process: the in-process function agrees.
    from saeq.jobs.evaluate_transcoder import evaluate_transcoder
    from saeq.jobs.harvest import context_batches
    from saeq.ml.corpus import iter_documents
    from saeq.ml.models import load_model
    from saeq.ml.sae import SparseAutoencoder, Transcoder
    from saeq.ml.sinks import SinkReference

    files = client.download(trained["id"], tmp_path, prefix="saes/tc/saelens/")
    tc = SparseAutoencoder.load(files[0].parent)
    assert isinstance(tc, Transcoder)
    lm = load_model(ModelSpec(name=str(model_dir)), cache_dir=str(tmp_path / "cache"))
    sinks = client.manifest(pair_harvest["id"])["hooks"][HOOK]["sinks"]
    docs = iter_documents(HELD_OUT, seed=7)
    contexts = [ids for ids, _ in context_batches(docs, lm.tokenizer, context_len=64, max_tokens=2048, batch_size=8)]
    before = torch.get_num_threads()
    torch.set_num_threads(_worker_threads())
    try:
        r = evaluate_transcoder(
            tc,
            lm,
            contexts,
            hook=HOOK,
            target_hook=TARGET,
            sinks=SinkReference(sinks["median_norm"], sinks["norm_factor"]),
        )
    finally:
        torch.set_num_threads(before)
    ours = r.metrics
    pairs = {
        "fvu": "fvu",
        "ce_clean": "ce_loss_clean",
        "ce_transcoder": "ce_loss_with_sae",
        "ce_zero": "ce_loss_with_ablation",
        "ce_loss_recovered": "ce_loss_recovered",
        "kl_transcoder": "kl_div_with_sae",
        "kl_zero": "kl_div_with_ablation",
    }
    for mine, theirs in pairs.items():
        assert abs(ours[mine] - m[theirs]) <= 1e-6, (mine, ours[mine], m[theirs])
    assert r.counts["sinks_excluded"] == manifest["counts"]["n_sinks_excluded"]


def test_checks_read_a_transcoders_features_and_compare_with_and_absorption_are_refused(client_module, trained):
    client = client_module
    checks = {
        "n_docs": 32,
        "context_len": 32,
        "specificity": None,
        "sensitivity": {"n_pairs": 8, "max_doc_share": 0.25},
        "probing": {"ks": [1, 5], "min_per_class": 4},
    }
    spec = EvaluateSpec.model_validate({"sae": {"job_id": trained["id"]}, "max_tokens": 512, "checks": checks})
    done = client.wait(client.submit(spec)["id"], timeout=300)
    manifest = client.manifest(done["id"])
    summary = manifest["checks"]
    print("transcoder checks:", {k: summary[k] for k in ("probing", "sensitivity") if k in summary})
    elements = summary["completeness"]["chemical elements"]
    assert elements["n_members"] == 96 and 0 <= elements["n_covered"] <= 96
    assert summary["probing"]["n_topics"] >= 1 and set(summary["probing"]["sae"]) == {"1", "5"}
    assert set(summary["sensitivity"]) == {"fr", "es"} and summary["sensitivity"]["fr"]["n_pairs"] == 8
    assert manifest["splice"]["kind"] == "transcoder"

    compare = EvaluateSpec.model_validate(
        {
            "sae": {"job_id": trained["id"]},
            "max_tokens": 512,
            "checks": None,
            "compare_with": {"sae": {"job_id": trained["id"]}},
        }
    )
    with pytest.raises(JobFailed) as e:
        client.wait(client.submit(compare)["id"], timeout=120)
    error = e.value.job["error"]
    assert error["field"] == "spec.compare_with" and "plain SAEs" in error["message"], error

    # absorption reads decoder rows as directions in the input hook's space: a transcoder's write the MLP's output
    absorption = EvaluateSpec.model_validate(
        {"sae": {"job_id": trained["id"]}, "max_tokens": 512, "checks": {"specificity": None, "absorption": {}}}
    )
    with pytest.raises(JobFailed) as e:
        client.wait(client.submit(absorption)["id"], timeout=120)
    error = e.value.job["error"]
    assert error["field"] == "spec.checks.absorption" and "transcoder" in error["message"], error
