"""95% intervals of the specificity figures: the pooled Spearman and the pooled share rated 2-3 per
activation bin, bootstrapped over features (each feature is rated on contexts of its own, so
features are the units, as for the mean Spearman); a feature's own Spearman, bootstrapped over its
contexts; a feature's share per bin, Wilson's interval over its contexts in the bin."""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import rankdata

from saeq.ml.intervals import RESAMPLES, group_bootstrap, ratio_of_sums, wilson
from saeq.specs.estimates import Estimate


def _spearman_rows(x_RN: np.ndarray, y_RN: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair (ties get their mean rank, as scipy's spearmanr); NaN where
    either side of a row is constant."""
    rx, ry = rankdata(x_RN, axis=1), rankdata(y_RN, axis=1)
    rx, ry = rx - rx.mean(1, keepdims=True), ry - ry.mean(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (rx * ry).sum(1) / np.sqrt((rx * rx).sum(1) * (ry * ry).sum(1))


def _percentile_estimate(value: float, boots_R: np.ndarray, n: int, unit: str) -> Estimate:
    boots_R = boots_R[np.isfinite(boots_R)]
    if boots_R.size < 2:
        low = high = math.nan
    else:
        low, high = (float(q) for q in np.quantile(boots_R, [0.025, 0.975]))
    return Estimate(value=value, low=low, high=high, n=n, unit=unit, method="bootstrap")


def spearman_interval(x: list[float], y: list[float], value: float | None, *, seed: int = 0) -> dict | None:
    """One feature's Spearman(activation, score), bootstrapped over its rated contexts."""
    if value is None or len(x) < 3:
        return None
    rng = np.random.default_rng(seed)
    idx_RN = rng.integers(0, len(x), size=(RESAMPLES, len(x)))
    boots_R = _spearman_rows(np.asarray(x, np.float64)[idx_RN], np.asarray(y, np.float64)[idx_RN])
    return _percentile_estimate(value, boots_R, len(x), "contexts").model_dump(mode="json")


def pooled_spearman_interval(
    rows_by_feature: list[list[tuple[float, float]]], value: float | None, *, seed: int = 0
) -> dict | None:
    """The pooled Spearman(fraction of max, score) over all features' contexts, bootstrapped over
    features: a resample draws whole features, with all their contexts (features may have been
    rated on different numbers of contexts, so one resample at a time)."""
    F = len(rows_by_feature)
    if value is None or F < 2:
        return None
    arrays = [np.asarray(rows, np.float64).reshape(-1, 2) for rows in rows_by_feature]
    drawn_RF = np.random.default_rng(seed).integers(0, F, size=(RESAMPLES, F))
    boots_R = np.empty(RESAMPLES)
    for r, drawn in enumerate(drawn_RF):
        xy = np.concatenate([arrays[f] for f in drawn])
        boots_R[r] = _spearman_rows(xy[None, :, 0], xy[None, :, 1])[0]
    return _percentile_estimate(value, boots_R, F, "features").model_dump(mode="json")


def pooled_share_intervals(counts_by_feature: list[list[list[int]]]) -> list[dict | None]:
    """Per activation bin, the share of all contexts rated 2-3, bootstrapped over features, and
    widened to Wilson's interval over the bin's contexts where that is wider: at a share of 0 or 1
    every resample gives the same share (a demo bin showed 0.00 [0.00, 0.00] from 147 contexts),
    and Wilson's bound is what those contexts allow. counts_by_feature[f][bin][rating]: contexts
    of feature f."""
    c_FBR = np.asarray(counts_by_feature, np.float64)
    high_FB, n_FB = c_FBR[:, :, 2] + c_FBR[:, :, 3], c_FBR.sum(2)
    out: list[dict | None] = []
    for b in range(c_FBR.shape[1]):
        if n_FB[:, b].sum() == 0:
            out.append(None)
            continue
        value = float(high_FB[:, b].sum() / n_FB[:, b].sum())
        est = group_bootstrap(ratio_of_sums(high_FB[:, b], n_FB[:, b]), len(n_FB), unit="features", value=value)
        floor = wilson(int(high_FB[:, b].sum()), int(n_FB[:, b].sum()), unit="contexts")
        if not math.isnan(est.low):
            est = est.model_copy(update={"low": min(est.low, floor.low), "high": max(est.high, floor.high)})
        out.append(est.model_dump(mode="json"))
    return out


def share_intervals(counts_by_bin: list[list[int]]) -> list[dict | None]:
    """One feature's share rated 2-3 per bin, Wilson's interval over its contexts in the bin."""
    return [
        None if sum(c) == 0 else wilson(c[2] + c[3], sum(c), unit="contexts").model_dump(mode="json")
        for c in counts_by_bin
    ]
