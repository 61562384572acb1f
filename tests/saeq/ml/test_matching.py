"""Feature matching between two SAEs' decoders: a permuted copy is found exactly, random ones not."""

from __future__ import annotations

import numpy as np
import torch

from saeq.ml.matching import PairCorrelation, match_decoders


def _unit_rows(n: int, d: int, seed: int) -> torch.Tensor:
    W = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return W / W.norm(dim=1, keepdim=True)


def test_a_permuted_decoder_is_matched_back_at_cosine_one():
    W_a = _unit_rows(96, 16, seed=0)
    perm = torch.randperm(96, generator=torch.Generator().manual_seed(1))
    W_b = W_a[perm]  # B's latent j is A's latent perm[j]
    match, cosine = match_decoders(W_a, W_b)
    assert (perm[torch.as_tensor(match)] == torch.arange(96)).all()
    np.testing.assert_allclose(cosine, 1.0, atol=1e-9)


def test_random_decoders_match_at_low_cosine_and_a_narrower_b_leaves_features_unmatched():
    match, cosine = match_decoders(_unit_rows(64, 32, seed=0), _unit_rows(48, 32, seed=2))
    assert (match >= 0).sum() == 48 and (match == -1).sum() == 16
    assert np.isnan(cosine[match == -1]).all()
    assert np.nanmax(cosine) < 0.8 and np.nanmean(cosine) < 0.4


def test_pair_correlation_is_pearson_per_matched_pair():
    g = torch.Generator().manual_seed(0)
    acts_a = torch.rand(500, 3, generator=g)
    acts_b = torch.stack([2 * acts_a[:, 1] + 1, torch.rand(500, generator=g), torch.zeros(500)], dim=1)
    pairs = PairCorrelation(np.array([0, 1, 2]))  # A0-B0 (unrelated: B0 tracks A1), A1-B1, A2-B2 (dead)
    for chunk in range(0, 500, 128):  # streamed in chunks, as the job reads contexts
        pairs.add(acts_a[chunk : chunk + 128], acts_b[chunk : chunk + 128])
    corr = pairs.correlations()
    expected = np.corrcoef(acts_a[:, 0].numpy(), acts_b[:, 0].numpy())[0, 1]
    assert abs(corr[0] - expected) < 1e-9 and abs(corr[0]) < 0.2
    assert np.isnan(corr[2])  # B2 never fires: no correlation, not a made-up one
    pairs_shifted = PairCorrelation(np.array([1, -1, -1]))  # A0 matched to B1, the rest unmatched
    pairs_shifted.add(acts_a, acts_b)
    assert np.isnan(pairs_shifted.correlations()[1:]).all()
