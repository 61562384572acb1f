"""A label job's summary: per explainer, the mean of each score over its scored features, each mean
with a 95% interval from a two-stage bootstrap: the features are resampled (a different draw of
features would give a different mean), and each drawn feature's score is redrawn from its own
sampling distribution over its few windows (accuracy: the Jeffreys posterior of its n windows;
balanced accuracy and AUC: a normal of the width of the record's own interval). Over features alone,
a judge that scores every feature 0.5 would print 0.500 [0.500, 0.500]: certainty from 8 windows a
feature. A record without either (written before intervals) keeps its value fixed. The interval
is conservative: an observed score already carries its windows' noise, which the redraw adds again
(tests/saeq/jobs/test_label_summary.py: it covered the population mean in 38-40 of 40 draws)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from saeq.specs.estimates import Estimate
from saeq.specs.label import JudgeControl

RESAMPLES = 2000
Z95 = 1.959964


def _spread(metric: str, value: float, score: dict) -> tuple[str, float, float]:
    """How a feature's `metric` is redrawn: ("beta", a, b), ("normal", value, sd) or ("fixed", value, 0)."""
    ci = (score.get("intervals") or {}).get(metric)
    if ci is not None and math.isfinite(ci["low"]) and math.isfinite(ci["high"]):
        return "normal", value, (ci["high"] - ci["low"]) / (2 * Z95)
    n = int(score.get("n") or 0)
    if metric == "accuracy" and n > 0:
        k = round(value * n)
        return "beta", k + 0.5, n - k + 0.5
    return "fixed", value, 0.0


def two_stage_mean(values_F: list[float], spreads_F: list[tuple[str, float, float]], *, seed: int = 0) -> Estimate:
    """The mean over features with its 95% interval: features resampled, each drawn feature's value
    redrawn from its spread (clipped to [0, 1], where every label score lives)."""
    value, F = float(np.mean(values_F)), len(values_F)
    if F < 2:
        return Estimate(value=value, low=math.nan, high=math.nan, n=F, unit="features", method="two_stage_bootstrap")
    rng = np.random.default_rng(seed)
    draws_RF = np.empty((RESAMPLES, F))
    for f, (kind, a, b) in enumerate(spreads_F):
        if kind == "beta":
            draws_RF[:, f] = rng.beta(a, b, RESAMPLES)
        else:
            draws_RF[:, f] = np.clip(rng.normal(a, b, RESAMPLES), 0.0, 1.0) if b > 0 else a
    pick_RF = rng.integers(0, F, size=(RESAMPLES, F))
    boots_R = np.take_along_axis(draws_RF, pick_RF, axis=1).mean(1)
    low, high = np.quantile(boots_R, [0.025, 0.975])
    # The redraws can sit to one side of a mean at 0.5 or 1: the interval always holds the value.
    low, high = min(float(low), value), max(float(high), value)
    return Estimate(value=value, low=low, high=high, n=F, unit="features", method="two_stage_bootstrap")


def summarize_labels(records: list[dict], controls: Sequence[JudgeControl] = ()) -> dict:
    """explainer -> n_features, `scores` (scorer -> metric -> mean over the features it scored),
    `intervals` (scorer -> metric -> Estimate dict of that mean, n features), and `excluded`: the
    means of a scorer whose controls flag it uncalibrated, kept apart with the flag (and their
    intervals under `intervals` too)."""
    flags = {c.scorer: c.flag for c in controls if not c.calibrated}
    values: dict[str, dict[str, dict[str, list[float]]]] = {}
    spreads: dict[str, dict[str, dict[str, list[tuple[str, float, float]]]]] = {}
    n_features: dict[str, int] = {}
    for r in records:
        n_features[r["explainer"]] = n_features.get(r["explainer"], 0) + 1
        by_scorer = values.setdefault(r["explainer"], {})
        spread_by_scorer = spreads.setdefault(r["explainer"], {})
        for scorer, sc in r["scores"].items():
            for metric, v in sc.items():
                # a score's own fields: numbers, not its window count n or its intervals
                if metric != "n" and isinstance(v, int | float) and not isinstance(v, bool):
                    by_scorer.setdefault(scorer, {}).setdefault(metric, []).append(float(v))
                    spread_by_scorer.setdefault(scorer, {}).setdefault(metric, []).append(_spread(metric, v, sc))
    out: dict[str, dict] = {}
    for explainer, by_scorer in values.items():
        means = {k: {m: sum(v) / len(v) for m, v in ms.items()} for k, ms in by_scorer.items()}
        intervals = {
            k: {m: two_stage_mean(v, spreads[explainer][k][m]).model_dump(mode="json") for m, v in ms.items()}
            for k, ms in by_scorer.items()
        }
        out[explainer] = {
            "n_features": n_features[explainer],
            "scores": {k: ms for k, ms in means.items() if k not in flags},
            "excluded": {k: {**ms, "flag": flags[k]} for k, ms in means.items() if k in flags},
            "intervals": intervals,
        }
    return out
