"""Feature recovery: a planted dictionary scores 1, a random one near 0, a permuted and rescaled
copy still 1; saeq's MCC, uniqueness and F1 are SAELens's on the same weights; and a trained TopK
SAE recovers a tiny synthetic model's features (a regression pin)."""

from __future__ import annotations

import pytest
import torch

from saeq.checks.recovery import best_cosines, mcc, score_recovery, uniqueness
from saeq.ml.synthetic import SyntheticConfig, SyntheticModel
from tests.helpers import import_peer

pytestmark = pytest.mark.usefixtures("one_thread")


def held_out(model: SyntheticModel, n_batches: int = 4):
    return [(b.acts_BD, b.codes_BF) for b in model.batches(2048, n_batches, seed=99)]


def test_the_planted_dictionary_scores_one():
    """With fewer features than dimensions the codes are the least-squares solution: an oracle."""
    model = SyntheticModel(SyntheticConfig(n_features=32, d_model=64, max_prob=0.3, min_prob=0.05))
    F_FD = model.features_FD
    pinv_DF = torch.linalg.pinv(F_FD)

    def encode(x):
        codes = x @ pinv_DF
        return codes * (codes.abs() > 1e-3)

    r = score_recovery(encode, lambda c: c @ F_FD, F_FD, F_FD, held_out(model))
    assert r.mcc == pytest.approx(1.0) and r.mean_best_cos == pytest.approx(1.0) and r.uniqueness == 1.0
    assert r.f1 == 1.0 and r.precision == 1.0 and r.recall == 1.0
    assert r.fvu < 1e-8 and r.l0 == pytest.approx(r.true_l0) and r.dead_fraction == 0.0


def test_a_random_dictionary_scores_near_zero():
    F_FD = SyntheticModel(SyntheticConfig(n_features=256, d_model=256)).features_FD
    W = torch.randn(256, 256, generator=torch.Generator().manual_seed(5))
    assert mcc(W, F_FD) < 0.25  # the best of 256 random |cos| in 256 dims is ~0.2
    assert float(best_cosines(W, F_FD).mean()) < 0.3
    assert mcc(F_FD, F_FD) == pytest.approx(1.0)


def test_a_permuted_rescaled_sign_flipped_copy_still_scores_one():
    F_FD = SyntheticModel(SyntheticConfig(n_features=300, d_model=64)).features_FD
    g = torch.Generator().manual_seed(2)
    perm = torch.randperm(300, generator=g)
    signs = torch.where(torch.rand(300, 1, generator=g) < 0.5, -1.0, 1.0)
    W = F_FD[perm] * (torch.rand(300, 1, generator=g) * 5 + 0.1) * signs
    assert mcc(W, F_FD) == pytest.approx(1.0, abs=1e-6)
    assert uniqueness(W, F_FD) == 1.0
    # Two latents on one feature: uniqueness says so; the one-to-one MCC pays for the lost feature.
    assert uniqueness(torch.cat([W, W[:1]]), F_FD) == pytest.approx(300 / 301)
    W2 = W.clone()
    W2[1] = W[0]  # feature perm[1] has no latent left
    assert mcc(W2, F_FD) < 1 - 0.5 / 300 and uniqueness(W2, F_FD) == pytest.approx(299 / 300)


def test_the_figures_equal_saelens_on_the_same_weights():
    evals = import_peer("sae_lens.synthetic.evals")
    model = SyntheticModel(SyntheticConfig(n_features=200, d_model=48, max_prob=0.2, min_prob=0.01))
    g = torch.Generator().manual_seed(4)
    W = model.features_FD[torch.randperm(200, generator=g)[:150]] + 0.4 * torch.randn(150, 48, generator=g)
    assert mcc(W, model.features_FD) == pytest.approx(
        evals.mean_correlation_coefficient(W, model.features_FD), abs=1e-6
    )
    assert uniqueness(W, model.features_FD) == pytest.approx(evals.feature_uniqueness(W, model.features_FD), abs=1e-12)
    batch = next(model.batches(4096, seed=3))
    enc_DL = torch.randn(48, 150, generator=g)

    def encode(x):
        pre = x @ enc_DL
        return pre * (pre > 2.0)

    r = score_recovery(encode, lambda a: a @ W, W, model.features_FD, [(batch.acts_BD, batch.codes_BF)])
    theirs = evals.compute_classification_metrics(encode(batch.acts_BD), batch.codes_BF, W, model.features_FD)
    assert (r.precision, r.recall, r.f1) == pytest.approx((theirs.precision, theirs.recall, theirs.f1_score), abs=1e-6)
    assert 0.0 < r.f1 < 1.0


@pytest.mark.parametrize("architecture", ["topk", "batchtopk"])
def test_a_trained_sae_recovers_a_tiny_synthetic_model(architecture):
    """300 steps of saeq's trainer, ~2 s idle: recovery below these floors is a regression. (Measured
    over SAE seeds 0-2 once the generator's seeds no longer coincide with the SAE's: MCC 0.85-0.87
    topk, 0.76-0.81 batchtopk, F1 0.50-0.61, against a random decoder's 0.37. The floors of 0.95 it
    had before held only because seed 0's SAE started at the true features. With free decoder rows,
    the default since 2026-12-03: topk MCC 0.84-0.87, F1 0.59-0.63; batchtopk MCC 0.84-0.85, F1
    0.60-0.62, which unit rows (0.76-0.81, 0.50-0.55) miss: batchtopk's own floors catch that.)"""
    from saeq.jobs.train import train_saes
    from saeq.specs import ActivationsRef, SaeConfig, TrainSpec

    cfg = SyntheticConfig(
        n_features=128, d_model=48, zipf_exponent=0.5, max_prob=0.2, min_prob=0.002, magnitude_std=0.3, noise_std=0.01
    )
    model = SyntheticModel(cfg)
    spec = TrainSpec(
        activations=ActivationsRef(job_id="a" * 32, hook="blocks.0.hook_resid_post"),
        saes=[SaeConfig(architecture=architecture, d_sae=128, k=4)],
        total_tokens=300 * 1024,
        batch_size=1024,
        checkpoint_every_tokens=None,
    )
    sae = train_saes(spec, (b.acts_BD for b in model.batches(1024, 300, seed=1))).saes["sae0"]
    r = score_recovery(sae.encode, sae.decode, sae.W_dec, model.features_FD, held_out(model))
    assert r.mcc > 0.7 and r.mean_best_cos > 0.75 and r.uniqueness > 0.7
    assert r.f1 > 0.4 and r.fvu < 0.3 and r.dead_fraction < 0.05
    if architecture == "batchtopk":
        assert r.mcc > 0.8 and r.f1 > 0.56
