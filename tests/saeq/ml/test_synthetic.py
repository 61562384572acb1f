"""The synthetic ground truth: firing follows the configured Zipf law, children follow their
parents, groups are correlated, and the same seed gives the same data."""

from __future__ import annotations

import pytest
import torch

from saeq.ml.synthetic import SyntheticConfig, SyntheticModel

pytestmark = pytest.mark.usefixtures("one_thread")


def firing(model: SyntheticModel, n: int, seed: int = 1) -> torch.Tensor:
    """(n, F) booleans: which true features fire in each of n sampled tokens."""
    return torch.cat([b.codes_BF > 0 for b in model.batches(4096, n // 4096, seed=seed)])


def test_firing_frequencies_follow_the_configured_zipf_exponent():
    model = SyntheticModel(SyntheticConfig(n_features=256, d_model=32, zipf_exponent=0.8, max_prob=0.3, min_prob=0.005))
    freq = firing(model, 40 * 4096).float().mean(0)
    ranks = torch.arange(1, 101, dtype=torch.float64)  # p from 0.3 down to 0.0075: >= 1,200 firings each
    x, y = ranks.log(), freq[:100].double().log()
    slope = float(((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())
    assert slope == pytest.approx(-0.8, abs=0.03)
    assert float(freq[0]) == pytest.approx(0.3, abs=0.01)
    assert float(freq[-50:].mean()) == pytest.approx(0.005, abs=5e-4)  # the floor, from rank 167


@pytest.mark.parametrize("exclusive", [True, False])
def test_a_child_never_fires_without_its_parent_and_keeps_its_frequency(exclusive):
    cfg = SyntheticConfig(n_features=512, d_model=32, n_parents=8, n_children=4, mutually_exclusive=exclusive, seed=3)
    model = SyntheticModel(cfg)
    fires = firing(model, 20 * 4096)
    for parent, children in model.hierarchy:
        kids = fires[:, children]
        assert not (kids.any(1) & ~fires[:, parent]).any()
        if exclusive:
            assert int(kids.sum(1).max()) <= 1
        p = model.firing_probs_F[children]
        assert kids.float().mean(0) == pytest.approx(
            p.tolist(), abs=4 * (float(p.max()) / len(fires)) ** 0.5
        )  # 4 sigma
    assert len({c for _, cs in model.hierarchy for c in cs}) == 8 * 4  # no child shared


def test_grouped_features_fire_together_and_others_do_not():
    cfg = SyntheticConfig(n_features=256, d_model=32, max_prob=0.3, zipf_exponent=0.3, n_groups=2, group_size=4)
    model = SyntheticModel(cfg)
    fires = firing(model, 20 * 4096).float()
    corr = torch.corrcoef(fires.T)
    g0, g1 = model.groups_GS.tolist()
    within = corr[g0][:, g0][~torch.eye(4, dtype=torch.bool)]
    across = corr[g0][:, g1]
    assert float(within.min()) > 0.1 and float(across.abs().max()) < 0.03
    assert fires.mean(0)[g0] == pytest.approx(model.firing_probs_F[g0].tolist(), abs=0.01)  # marginals kept


def test_acts_are_codes_times_features_plus_bias_and_noise_and_seeded():
    cfg = SyntheticConfig(n_features=128, d_model=16, bias_norm=2.0, noise_std=0.1, magnitude_std=0.5)
    model = SyntheticModel(cfg)
    a, b = next(model.batches(2048)), next(SyntheticModel(cfg).batches(2048))
    assert torch.equal(a.acts_BD, b.acts_BD)
    residual = a.acts_BD - a.codes_BF @ model.features_FD - model.bias_D
    assert float(residual.std()) == pytest.approx(0.1, rel=0.05)
    assert float(model.bias_D.norm()) == pytest.approx(2.0)
    assert not torch.equal(a.acts_BD, next(model.batches(2048, seed=2)).acts_BD)  # a held-out stream


def test_a_config_that_needs_more_features_than_it_has_is_refused():
    with pytest.raises(ValueError, match="more features"):
        SyntheticConfig(n_features=16, n_parents=4, n_children=4)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_an_sae_seeded_alike_does_not_start_at_the_true_features(seed):
    """Seeded plainly, SyntheticConfig(seed=0)'s features were the very randn(F, D) that an SAE of
    d_sae=F, d_in=D seeded 0 draws for its decoder: it started at the truth (MCC 1 before a step),
    and every recovery figure of seed 0 was inflated."""
    from saeq.checks.recovery import mcc
    from saeq.ml.sae import SparseAutoencoder

    model = SyntheticModel(SyntheticConfig(n_features=64, d_model=32, seed=seed))
    sae = SparseAutoencoder(32, 64, "topk", k=4, generator=torch.Generator().manual_seed(seed))
    chance = mcc(torch.randn(64, 32, generator=torch.Generator().manual_seed(1234)), model.features_FD)
    assert mcc(sae.W_dec.detach(), model.features_FD) < chance + 0.1
