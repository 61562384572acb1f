"""Comparing two SAEs on the same contexts: a worse SAE is found worse, an SAE against itself is
within noise, a permuted copy matches every feature."""

from __future__ import annotations

import math

import pytest
import torch

from saeq.jobs.compare import compare_metrics, match_features, seed_noise_floor, verdict
from saeq.jobs.evaluate import evaluate_sae
from saeq.ml.sae import SparseAutoencoder
from saeq.specs.compare import COMPARED_METRICS
from saeq.specs.estimates import Estimate
from tests.saeq.conftest import tiny_lm
from tests.saeq.jobs.test_evaluate import HOOK, _contexts, identity_sae

D = 32


@pytest.fixture(scope="module")
def lm(tiny_tokenizer):
    return tiny_lm(tiny_tokenizer, n_layers=3, d_model=D)


@pytest.fixture(scope="module")
def contexts():
    return _contexts(n_batches=4, B=8, T=24)


def _noisy_identity(scale: float, seed: int = 0) -> SparseAutoencoder:
    """The exact identity SAE with noise on its decoder: a worse reconstruction by design."""
    sae = identity_sae(D)
    with torch.no_grad():
        sae.W_dec.add_(scale * torch.randn(sae.W_dec.shape, generator=torch.Generator().manual_seed(seed)))
    return sae


def test_a_worse_sae_is_found_worse_and_an_sae_against_itself_within_noise(lm, contexts):
    good = evaluate_sae(_noisy_identity(0.02), lm, HOOK, contexts, sinks=None)
    worse = evaluate_sae(_noisy_identity(0.3, seed=1), lm, HOOK, contexts, sinks=None)
    rows = {r.metric: r for r in compare_metrics(good, worse)}
    assert list(rows) == list(COMPARED_METRICS)
    for name in ("fvu", "mse", "kl_div_with_sae"):
        assert rows[name].better == "a" and rows[name].difference.high < 0, rows[name]
        assert rows[name].verdict.startswith("A better by"), rows[name].verdict
    # (CE loss recovered is a ratio over this random model's tiny ablation gap: too noisy to rank here.)
    fvu = rows["fvu"].difference
    assert fvu.value == pytest.approx(good.metrics["fvu"] - worse.metrics["fvu"])
    assert (fvu.method, fvu.n, fvu.unit) == ("paired_bootstrap", 32, "contexts")
    # Paired: a 1.3% difference on the same contexts is found, though the two intervals overlap.
    slightly = evaluate_sae(_noisy_identity(0.302, seed=1), lm, HOOK, contexts, sinks=None)
    close = {r.metric: r for r in compare_metrics(worse, slightly)}["fvu"]
    assert close.a.high > close.b.low and close.better == "a", close
    # B against A: the same difference, the other sign, B named worse.
    flipped = {r.metric: r for r in compare_metrics(worse, good)}
    assert flipped["fvu"].better == "b" and flipped["fvu"].verdict.startswith("B better by")
    # A noise floor above the difference turns the verdict to within noise.
    floored = {r.metric: r for r in compare_metrics(good, worse, {"fvu": 2 * abs(fvu.value)})}
    assert floored["fvu"].better is None and "noise floor" in floored["fvu"].verdict

    same = compare_metrics(good, good)
    for row in same:
        assert row.better is None and row.verdict.startswith("within noise"), row
        assert row.difference.value == 0.0


def test_l0_has_no_better_side_and_an_undefined_interval_is_within_noise():
    diff = Estimate(value=2.0, low=1.5, high=2.5, n=10, unit="contexts", method="paired_bootstrap")
    assert verdict("l0", diff) == (None, "A higher by 2 ([1.5, 2.5])")
    nan = Estimate(value=0.1, low=math.nan, high=math.nan, n=1, unit="contexts", method="paired_bootstrap")
    assert verdict("fvu", nan)[0] is None


def test_a_difference_must_exceed_the_floor_as_well_as_its_interval_excluding_zero():
    diff = Estimate(value=-0.002, low=-0.003, high=-0.001, n=16, unit="contexts", method="paired_bootstrap")
    assert verdict("fvu", diff)[0] == "a"  # no floor: the interval alone decides (evaluation noise)
    better, text = verdict("fvu", diff, 0.0025)
    assert better is None and text == "within noise (|A - B| = 0.002 is not above the noise floor 0.0025)"
    better, text = verdict("fvu", diff, 0.0015)
    assert better == "a" and text == "A better by 0.002 (A - B [-0.003, -0.001], above the noise floor 0.0015)"
    holds_zero = Estimate(value=-0.01, low=-0.02, high=0.001, n=16, unit="contexts", method="paired_bootstrap")
    assert verdict("fvu", holds_zero, 0.0)[0] is None  # a floor never overrules the interval


def test_the_seed_floor_is_t_times_sqrt2_times_the_seeds_sd(lm, contexts):
    """Three 'seeds' of one configuration on the same contexts: floor = t(0.975, 2) sqrt(2) sd."""
    per_seed = [evaluate_sae(_noisy_identity(0.1, seed=s), lm, HOOK, contexts, sinks=None) for s in (2, 3, 4)]
    floors, sd, values = seed_noise_floor(per_seed)
    fvus = [r.metrics["fvu"] for r in per_seed]
    assert values["fvu"] == fvus and sd["fvu"] == pytest.approx(float(torch.tensor(fvus, dtype=torch.float64).std()))
    assert floors["fvu"] == pytest.approx(4.302653 * math.sqrt(2) * sd["fvu"], rel=1e-6) and floors["fvu"] > 0
    assert set(floors) == {m for m in COMPARED_METRICS if not any(math.isnan(v) for v in values[m])}
    # A third SAE of the same kind is within that floor of the first; one far worse is beyond it.
    rows = {r.metric: r for r in compare_metrics(per_seed[0], per_seed[1], floors)}
    assert rows["fvu"].better is None and rows["fvu"].floor == floors["fvu"]
    worse = evaluate_sae(_noisy_identity(0.5, seed=9), lm, HOOK, contexts, sinks=None)
    assert {r.metric: r for r in compare_metrics(per_seed[0], worse, floors)}["fvu"].better == "a"
    with pytest.raises(ValueError, match="at least 2 seeds"):
        seed_noise_floor(per_seed[:1])


def _topk(seed: int) -> SparseAutoencoder:
    return SparseAutoencoder(D, 64, "topk", k=6, generator=torch.Generator().manual_seed(seed))


def test_a_permuted_copy_matches_every_feature_and_a_random_sae_few(lm, contexts):
    sae = _topk(0)
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    copy = _topk(0)
    with torch.no_grad():
        copy.W_dec.copy_(sae.W_dec[perm])
        copy.W_enc.copy_(sae.W_enc[:, perm])
        copy.b_enc.copy_(sae.b_enc[perm])
        copy.b_dec.copy_(sae.b_dec)
    m = match_features(sae, copy, lm, HOOK, contexts, sinks=None, min_cosine=0.7, min_correlation=0.5)
    assert 0 < m.n_alive < 64  # some of a random TopK's latents never fire on these contexts
    assert m.n_stable == m.n_alive and m.stable_fraction.value == 1.0 and m.stable_fraction.n == m.n_alive
    assert all(perm[j] == i for i, j in enumerate(m.match))
    assert min(m.cosine) == pytest.approx(1.0, abs=1e-6)
    assert min(c for c in m.correlation if not math.isnan(c)) == pytest.approx(1.0, abs=1e-6)
    other = match_features(sae, _topk(7), lm, HOOK, contexts, sinks=None, min_cosine=0.7, min_correlation=0.5)
    assert other.stable_fraction.value < 0.1 and other.mean_cosine < 0.4


def test_a_wider_sae_whose_latents_refine_some_features_shows_those_splits(lm, contexts):
    """A 64-latent SAE and a 72-latent one made from it: 8 of its features each replaced by two
    children 30 degrees either side (cosine 0.87 to the parent), the rest kept: exactly those 8 split."""
    narrow = _topk(0)
    wide = SparseAutoencoder(D, 72, "topk", k=6, generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(2)
    split = list(range(0, 64, 8))
    rows = []
    for f in range(64):
        d = narrow.W_dec[f].detach() / narrow.W_dec[f].detach().norm()
        if f in split:  # two children in the plane of d and a random direction orthogonal to it
            o = torch.randn(D, generator=g)
            o = o - (o @ d) * d
            o = o / o.norm()
            rows += [
                math.cos(math.pi / 6) * d + math.sin(math.pi / 6) * o,
                math.cos(math.pi / 6) * d - math.sin(math.pi / 6) * o,
            ]
        else:
            rows.append(d)
    with torch.no_grad():
        wide.W_dec.copy_(torch.stack(rows))
    m = match_features(narrow, wide, lm, HOOK, contexts, sinks=None, min_cosine=0.7, min_correlation=0.5)
    assert m.splits is not None and m.splits.narrow == "a" and m.splits.n_features == 64
    assert sorted(m.splits.children) == split and all(len(c) == 2 for c in m.splits.children.values())
    assert m.splits.n_split == 8 and m.splits.split_fraction.value == pytest.approx(8 / 64)
    same = match_features(narrow, narrow, lm, HOOK, contexts, sinks=None, min_cosine=0.7, min_correlation=0.5)
    assert same.splits is None  # one width: nothing to split
    flipped = match_features(wide, narrow, lm, HOOK, contexts, sinks=None, min_cosine=0.7, min_correlation=0.5)
    assert flipped.splits is not None and flipped.splits.narrow == "b" and flipped.splits.n_split == 8
