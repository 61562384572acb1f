"""A label job's summary: per explainer, the mean of each score over its scored features, each mean
with a 95% interval from a bootstrap over those features (the features are the units drawn: a
different draw of features would give a different mean)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from saeq.ml.intervals import bootstrap_mean
from saeq.specs.label import JudgeControl


def summarize_labels(records: list[dict], controls: Sequence[JudgeControl] = ()) -> dict:
    """explainer -> n_features, `scores` (scorer -> metric -> mean over the features it scored),
    `intervals` (scorer -> metric -> Estimate dict of that mean, n features), and `excluded`: the
    means of a scorer whose controls flag it uncalibrated, kept apart with the flag (and their
    intervals under `intervals` too)."""
    flags = {c.scorer: c.flag for c in controls if not c.calibrated}
    values: dict[str, dict[str, dict[str, list[float]]]] = {}
    n_features: dict[str, int] = {}
    for r in records:
        n_features[r["explainer"]] = n_features.get(r["explainer"], 0) + 1
        by_scorer = values.setdefault(r["explainer"], {})
        for scorer, sc in r["scores"].items():
            for metric, v in sc.items():
                # a score's own fields: numbers, not its window count n or its intervals
                if metric != "n" and isinstance(v, int | float) and not isinstance(v, bool):
                    by_scorer.setdefault(scorer, {}).setdefault(metric, []).append(float(v))
    out: dict[str, dict] = {}
    for explainer, by_scorer in values.items():
        means = {k: {m: sum(v) / len(v) for m, v in ms.items()} for k, ms in by_scorer.items()}
        intervals = {
            k: {
                m: bootstrap_mean(np.asarray(v), np.ones(len(v)), unit="features", value=means[k][m]).model_dump(
                    mode="json"
                )
                for m, v in ms.items()
            }
            for k, ms in by_scorer.items()
        }
        out[explainer] = {
            "n_features": n_features[explainer],
            "scores": {k: ms for k, ms in means.items() if k not in flags},
            "excluded": {k: {**ms, "flag": flags[k]} for k, ms in means.items() if k in flags},
            "intervals": intervals,
        }
    return out
