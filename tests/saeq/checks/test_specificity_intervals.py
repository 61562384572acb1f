"""The specificity figures' intervals: the vectorised Spearman is scipy's, a feature's interval covers
the population Spearman at about its nominal rate, and the pooled one draws whole features."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import spearmanr

from saeq.checks.specificity_intervals import (
    _spearman_rows,
    pooled_share_intervals,
    pooled_spearman_interval,
    share_intervals,
    spearman_interval,
)


def test_the_rowwise_spearman_is_scipys_with_ties():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=(5, 30)).astype(float)  # many ties, as 0-3 ratings have
    y = x + rng.normal(size=x.shape)
    expected = [spearmanr(a, b).statistic for a, b in zip(x, y, strict=True)]  # pyright: ignore[reportAttributeAccessIssue]
    assert np.allclose(_spearman_rows(x, y), expected)


def test_a_features_interval_covers_the_population_spearman_at_about_95_percent():
    # Bivariate normal with correlation r: the population Spearman is 6/pi asin(r/2).
    r, n = 0.6, 40
    truth = 6 / math.pi * math.asin(r / 2)
    rng = np.random.default_rng(1)
    covered = 0
    for trial in range(40):
        xy = rng.multivariate_normal([0, 0], [[1, r], [r, 1]], size=n)
        rho = float(spearmanr(xy[:, 0], xy[:, 1]).statistic)  # pyright: ignore[reportAttributeAccessIssue]
        ci = spearman_interval(list(xy[:, 0]), list(xy[:, 1]), rho, seed=trial)
        assert ci is not None and ci["low"] <= rho <= ci["high"] and ci["n"] == n
        covered += ci["low"] <= truth <= ci["high"]
    assert covered >= 36, covered  # >= 90% of 40


def test_the_pooled_interval_resamples_features_and_narrows_with_more_of_them():
    rng = np.random.default_rng(2)

    def features(n_features: int) -> list[list[tuple[float, float]]]:
        out = []
        for _ in range(n_features):
            x = rng.uniform(size=20)
            out.append(list(zip(x, x + rng.normal(scale=0.5, size=20), strict=True)))
        return out

    widths = []
    for n_features in (4, 64):
        rows = features(n_features)
        flat = [r for f in rows for r in f]
        rho = float(spearmanr([a for a, _ in flat], [b for _, b in flat]).statistic)  # pyright: ignore[reportAttributeAccessIssue]
        ci = pooled_spearman_interval(rows, rho)
        assert ci is not None and ci["unit"] == "features" and ci["n"] == n_features
        assert ci["low"] <= rho <= ci["high"]
        widths.append(ci["high"] - ci["low"])
    assert widths[1] < 0.75 * widths[0]  # 16x the features; with 4, the bootstrap's spread runs low
    assert pooled_spearman_interval(features(1), 0.5) is None  # one feature: nothing to resample


def test_share_intervals_per_bin():
    # counts[bin][rating]: bin 0 empty, bin 1 all rated 3, bin 2 half rated 2-3
    counts = [[0, 0, 0, 0], [0, 0, 0, 10], [5, 0, 5, 0]]
    one = share_intervals(counts)
    assert one[0] is None
    assert one[1] is not None and one[1]["value"] == 1.0 and one[1]["low"] > 0.6 and one[1]["high"] == 1.0
    assert one[2] is not None and one[2]["value"] == 0.5 and one[2]["method"] == "wilson"
    pooled = pooled_share_intervals([counts, [[0, 0, 0, 0], [10, 0, 0, 0], [0, 0, 0, 10]]])
    assert pooled[0] is None
    assert pooled[1] is not None and pooled[1]["value"] == 0.5 and pooled[1]["unit"] == "features"
    assert pooled[1]["low"] < 0.5 < pooled[1]["high"]


def test_a_pooled_share_of_zero_still_has_the_width_its_contexts_allow():
    # 20 features x 8 contexts in the bin, none rated 2-3: every resample over features gives 0.
    pooled = pooled_share_intervals([[[8, 0, 0, 0]] for _ in range(20)])
    (share,) = pooled
    assert share is not None and share["value"] == 0.0 and share["low"] == 0.0
    assert 0.01 < share["high"] < 0.05, share  # Wilson's upper bound for 0 of 160
