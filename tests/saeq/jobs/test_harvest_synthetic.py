"""Synthetic shards and recovery scoring in-process: each shard the same bytes however the run is
resumed, no token a sink by position, the truth read back as stored, held-out rows from a stream
no shard draws, and the recovery figures of the true dictionary (1) and a random decoder (chance)."""

from __future__ import annotations

import pytest
import torch

from saeq.errors import Cancelled
from saeq.jobs.harvest_synthetic import NO_POSITION, synthetic_shards
from saeq.jobs.train_recovery import MATCHED_COS, synthetic_recovery
from saeq.ml.sae import SparseAutoencoder
from saeq.ml.synthetic_truth import generator_model, heldout_batches, read_truth, truth_bytes
from saeq.specs import HarvestSpec, SyntheticActivations

GENERATOR = SyntheticActivations(n_features=64, d_model=16, n_parents=2, n_groups=2, noise_std=0.01, seed=5)
SPEC = HarvestSpec(
    source="synthetic",
    synthetic=GENERATOR,
    max_tokens=1000,
    shard_tokens=384,
    dtype="float32",
    seed=2,
)


def test_shards_are_the_same_bytes_whichever_shard_a_run_starts_at():
    model = generator_model(GENERATOR.model_dump())
    whole = list(synthetic_shards(SPEC, model))
    assert [s.n_tokens for s in whole] == [384, 384, 232]  # max_tokens exactly, no contexts
    hook = SPEC.hooks[0]
    median = whole[0].sinks[hook].median_norm
    resumed = list(
        synthetic_shards(SPEC, generator_model(GENERATOR.model_dump()), start_shard=2, median_norms={hook: median})
    )
    assert torch.equal(resumed[0].tensors[hook]["acts"], whole[2].tensors[hook]["acts"])
    assert whole[0].sinks[hook].n_position0 == 0 and (whole[1].tensors[hook]["positions"] == NO_POSITION).all()
    assert not torch.equal(whole[0].tensors[hook]["acts"][:232], whole[2].tensors[hook]["acts"])  # own streams
    reseeded = SPEC.model_copy(update={"seed": 3})
    assert not torch.equal(
        next(synthetic_shards(reseeded, model)).tensors[hook]["acts"], whole[0].tensors[hook]["acts"]
    )


def test_a_stopped_harvest_raises_cancelled():
    with pytest.raises(Cancelled):
        list(synthetic_shards(SPEC, generator_model(GENERATOR.model_dump()), should_stop=lambda: True))


def test_the_truth_reads_back_and_held_out_rows_are_no_shards():
    model = generator_model(GENERATOR.model_dump())
    truth = read_truth(truth_bytes(model, SPEC.seed))
    assert torch.equal(truth.features_FD, model.features_FD) and truth.seed == 2
    assert truth.generator["n_parents"] == 2 and truth.model() is not None
    acts, codes = next(heldout_batches(model, SPEC.seed, 384))
    shard = next(synthetic_shards(SPEC, model)).tensors[SPEC.hooks[0]]["acts"]
    assert acts.shape == (384, 16) and codes.shape == (384, 64) and not torch.equal(acts, shard)
    # the rows are what the codes say, plus the noise
    assert (acts - (codes @ model.features_FD + model.bias_D)).std() < 0.02


def _sae_with_decoder(W_LD: torch.Tensor) -> SparseAutoencoder:
    """A TopK SAE (k=3) whose encoder and decoder are `W_LD`'s rows."""
    L, D = W_LD.shape
    sae = SparseAutoencoder(D, L, "topk", k=3)
    with torch.no_grad():
        sae.W_dec.copy_(W_LD)
        sae.W_enc.copy_(W_LD.T)
        sae.b_dec.zero_()
        sae.b_enc.zero_()
    return sae.eval()


def test_the_true_dictionary_scores_one_and_a_random_decoder_chance():
    model = generator_model({**GENERATOR.model_dump(), "noise_std": 0.0})
    truth = read_truth(truth_bytes(model, SPEC.seed))
    random_LD = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    random_LD /= random_LD.norm(dim=1, keepdim=True)
    report = synthetic_recovery(
        {"true": _sae_with_decoder(model.features_FD), "random": _sae_with_decoder(random_LD)}, truth, n_tokens=2048
    )
    true, rand = report["saes"]["true"], report["saes"]["random"]
    assert report["heldout"]["firing_scored"] and report["n_true_features"] == 64
    assert true["mcc"] > 0.999 and true["n_matched"] == 64 and true["uniqueness"] == 1.0
    assert true["per_feature"]["matched_latent"] == list(range(64))
    assert (
        rand["mcc"] < 0.6 and rand["n_matched"] < 64 * 0.1 and rand["f1_per_feature_mean"] < true["f1_per_feature_mean"]
    )
    assert len(true["per_feature"]["f1"]) == 64 and min(true["per_feature"]["matched_cos"]) >= MATCHED_COS
