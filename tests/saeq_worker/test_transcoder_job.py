"""A transcoder through a real stack: one harvest captures the MLP's input and output, the API
names activations.target_hook when a transcoder lacks it, a worker trains a TopK skip-transcoder
on the pairs, its sparsify export loads in sparsify with saeq's outputs, and splicing it in place of
the MLP reports CE loss recovered and KL (saeq.jobs.evaluate_transcoder, in this process: the
evaluate job does not take transcoders yet)."""

from __future__ import annotations

import pytest
import torch

from saeq.client.client import ApiError
from saeq.specs import ActivationsRef, BuiltinCorpus, HarvestSpec, ModelSpec, SaeConfig, TrainSpec
from tests.helpers import import_peer
from tests.tiny_model import save_tiny_llama

pytestmark = pytest.mark.integration

HOOK, TARGET = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"


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


def test_the_api_names_target_hook_when_a_transcoder_has_none(client_module, pair_harvest):
    with pytest.raises(ApiError) as e:
        client_module.submit(_spec(pair_harvest["id"], target_hook=None))
    assert e.value.status == 422 and "spec.activations.target_hook" in str(e.value)


def test_a_transcoder_trains_on_two_hooks_exports_to_sparsify_and_replaces_the_mlp(
    client_module, pair_harvest, model_dir, tmp_path
):
    sparsify = import_peer("sparsify")
    client = client_module
    assert pair_harvest["state"] == "succeeded", pair_harvest
    done = client.wait(client.submit(_spec(pair_harvest["id"]))["id"], timeout=600)
    assert done["state"] == "succeeded", done
    tc = client.manifest(done["id"])["saes"]["tc"]
    assert tc["architecture"] == "topk_skip_transcoder" and 0 < tc["metrics"]["fvu"] < 1, tc

    files = client.download(done["id"], tmp_path, prefix="saes/tc/sparsify/")
    folder = files[0].parent.resolve()
    theirs = sparsify.SparseCoder.load_from_disk(folder)
    assert theirs.cfg.transcode and theirs.cfg.skip_connection
    from saeq.ml.sae import SparseAutoencoder, TopKSkipTranscoder

    ours = SparseAutoencoder.load(folder)
    assert isinstance(ours, TopKSkipTranscoder)
    x = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).sae_out, ours.transcode(x), atol=1e-5, rtol=1e-5)

    from saeq.jobs.evaluate_transcoder import evaluate_transcoder
    from saeq.jobs.harvest import context_batches
    from saeq.ml.corpus import iter_documents
    from saeq.ml.models import load_model
    from saeq.ml.sinks import SinkReference

    lm = load_model(ModelSpec(name=str(model_dir)), cache_dir=str(tmp_path / "cache"))
    sinks = client.manifest(pair_harvest["id"])["hooks"][HOOK]["sinks"]
    docs = iter_documents(BuiltinCorpus(max_docs=400), seed=7)  # text like the harvest's
    contexts = [ids for ids, _ in context_batches(docs, lm.tokenizer, context_len=64, max_tokens=2048, batch_size=8)]
    r = evaluate_transcoder(
        ours,
        lm,
        contexts,
        hook=HOOK,
        target_hook=TARGET,
        sinks=SinkReference(sinks["median_norm"], sinks["norm_factor"]),
    )
    m = r.metrics
    print(f"transcoder: fvu {m['fvu']:.3f} CE recovered {m['ce_loss_recovered']:.3f} KL {m['kl_transcoder']:.2e}")
    assert 0 < m["fvu"] < 1 and 0 <= m["kl_transcoder"] < m["kl_zero"]
    # the tiny random model barely uses its MLP (CE moves by ~1e-4 nats): recovered is reported, not pinned
    assert m["ce_loss_recovered"] == m["ce_loss_recovered"] and r.counts["sinks_excluded"] >= 32
