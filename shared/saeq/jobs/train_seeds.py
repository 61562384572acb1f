"""The seed-to-seed spread of a train job with `seeds`: each configuration's final figures over its
seeds, the noise floor a difference between two configurations must beat to mean anything."""

from __future__ import annotations

import numpy as np

from saeq.ml.training import SaeMetrics
from saeq.specs import TrainSpec
from saeq.specs.train_seeds import sae_runs

SPREAD_FIGURES = ("fvu", "mse", "l0", "dead_fraction", "dead_fraction_validation", "dense_fraction")
"""The held-out figures of SaeMetrics whose spread is reported."""


def seed_spread(spec: TrainSpec, metrics: dict[str, SaeMetrics]) -> dict[str, dict]:
    """{configuration name (`saes[i].name`, default `sae{i}`): {"seeds": [...], "saes": [trained
    names], figure: {mean, sd, min, max, n}}} over `spec.seeds`; sd with n - 1 (None for one seed).
    Empty without `spec.seeds`."""
    if spec.seeds is None:
        return {}
    out: dict[str, dict] = {}
    for i, cfg in enumerate(spec.saes):
        runs = [r for r in sae_runs(spec) if r.index == i]
        entry: dict = {"seeds": [r.seed for r in runs], "saes": [r.name for r in runs]}
        for figure in SPREAD_FIGURES:
            values_S = np.array([getattr(metrics[r.name], figure) for r in runs], dtype=np.float64)
            entry[figure] = {
                "mean": float(values_S.mean()),
                "sd": float(values_S.std(ddof=1)) if len(values_S) > 1 else None,
                "min": float(values_S.min()),
                "max": float(values_S.max()),
                "n": len(values_S),
            }
        out[cfg.name or f"sae{i}"] = entry
    return out
