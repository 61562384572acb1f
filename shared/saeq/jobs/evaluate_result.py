"""The evaluate pass's result, made from its sums: the metrics (docs/metrics.md), histograms,
densities, FVU by position and per layer, and the metrics' 95% intervals (evaluate_intervals)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from saeq.jobs.evaluate_intervals import metric_intervals
from saeq.specs.estimates import Estimate

if TYPE_CHECKING:
    from saeq.jobs.evaluate import _Stats

L0_BINS = 64
LOG_DENSITY_BINS = torch.linspace(-7, 0, 36)  # log10 of firing frequency


@dataclass
class EvalResult:
    metrics: dict[str, float]
    feature_density: Tensor
    """(d_sae,) fraction of ordinary tokens on which each latent fires."""
    l0_histogram: list[int]
    """Count of ordinary tokens with L0 in each of L0_BINS equal bins over [0, l0_max]."""
    l0_max: int
    log_density_histogram: list[int]
    """Latents per bin of log10(density) over LOG_DENSITY_BINS; dead latents counted apart."""
    fvu_by_position: list[float | None]
    """FVU per context position (None where every token there is a sink)."""
    counts: dict[str, int] = field(default_factory=dict)
    intervals: dict[str, Estimate] = field(default_factory=dict)
    """95% interval of each metric: bootstrap over contexts, Wilson over latents (evaluate_intervals)."""
    group_sums: np.ndarray | None = None
    """(G, len(GROUP_COLUMNS)) the sums per context (per block of `contexts_per_group`), and
    `group_sum_x` (G, d_in): what a paired comparison with another SAE on the same contexts resamples."""
    group_sum_x: np.ndarray | None = None
    contexts_per_group: int = 1
    splice: dict[str, Any] = field(default_factory=dict)
    """What was spliced: the coder's kind, the hooks it read and those it replaced (CoderSplice)."""
    fvu_per_layer: list[float] | None = None
    """A crosscoder's FVU of each replaced hook, in order; None for one hook."""
    fvu_per_layer_intervals: list[Estimate] | None = None
    """Their 95% intervals, bootstrapped over contexts as the pooled FVU's."""


def layer_fvus(s: _Stats) -> list[float]:
    """Each layer's residual sum of squares over its total variance about its mean."""
    L = s.layer_sq_x.shape[0]
    mean_LD = (s.sum_x / s.n).view(L, -1)
    var_L = s.layer_sq_x / s.n - mean_LD.pow(2).sum(1)
    return [
        (float(r) / s.n) / float(v) if v > 1e-12 else math.nan for r, v in zip(s.layer_sq_resid, var_L, strict=True)
    ]


def _fvu(n, sum_x, sum_sq_x, sum_sq_resid) -> float:
    """Residual sum of squares over the total variance about the mean (not about zero)."""
    total_var = sum_sq_x / n - float((sum_x / n).pow(2).sum())
    return (sum_sq_resid / n) / total_var if total_var > 1e-12 else math.nan


def finish(s: _Stats, n_sinks: int, n_tokens: int, dense_threshold: float) -> EvalResult:
    fvu = _fvu(s.n, s.sum_x, s.sum_sq_x, s.sum_sq_resid)
    density = (s.fires / s.n).float()
    ce = {k: v / max(s.n_loss, 1) for k, v in s.ce.items()}
    kl = {k: v / max(s.n_loss, 1) for k, v in s.kl.items()}
    denom = ce["zero"] - ce["clean"]
    metrics = {
        "mse": s.sum_sq_resid / s.n,
        "fvu": fvu,
        "explained_variance": 1.0 - fvu,
        "cossim": s.sum_cos / s.n,
        "l0": s.sum_l0 / s.n,
        "l1": s.sum_l1 / s.n,
        "dead_fraction": float((s.fires == 0).float().mean()),
        "dense_fraction": float((density > dense_threshold).float().mean()),
        "ce_loss_clean": ce["clean"],
        "ce_loss_with_sae": ce["sae"],
        "ce_loss_with_ablation": ce["zero"],
        "ce_loss_recovered": (ce["zero"] - ce["sae"]) / denom if abs(denom) > 1e-12 else math.nan,
        "delta_lm_loss": ce["sae"] - ce["clean"],
        "kl_div_with_sae": kl["sae"],
        "kl_div_with_ablation": kl["zero"],
    }
    l0 = torch.cat(s.l0_all).float()
    l0_max = max(int(l0.max()), 1)
    l0_hist = torch.histc(l0, bins=L0_BINS, min=0, max=l0_max).long().tolist()
    alive = density[density > 0]
    log_hist = torch.histogram(alive.log10().clamp(min=LOG_DENSITY_BINS[0]), LOG_DENSITY_BINS).hist
    by_pos = [
        None
        if s.pos_n[t] == 0
        else _fvu(float(s.pos_n[t]), s.pos_sum_x[t], float(s.pos_sq_x[t]), float(s.pos_sq_resid[t]))
        for t in range(len(s.pos_n))
    ]
    n_dead, n_dense = int((s.fires == 0).sum()), int((density > dense_threshold).sum())
    intervals = metric_intervals(
        s.group_sums.numpy(),
        s.group_sum_x.numpy(),
        metrics,
        contexts_per_group=s.contexts_per_group,
        n_latents=len(s.fires),
        n_dead=n_dead,
        n_dense=n_dense,
    )
    return EvalResult(
        metrics,
        density,
        l0_hist,
        l0_max,
        log_hist.long().tolist(),
        by_pos,
        {
            "n_tokens": n_tokens,
            "n_ordinary": s.n,
            "n_sinks_excluded": n_sinks,
            "n_loss_positions": s.n_loss,
            "n_dead": n_dead,
            "n_contexts": s.n_contexts,
        },
        intervals,
        s.group_sums.numpy(),
        s.group_sum_x.numpy(),
        s.contexts_per_group,
    )
