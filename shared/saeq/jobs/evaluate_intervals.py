"""The evaluate job's 95% intervals: each metric bootstrapped over the evaluation's contexts (its
sums kept per context), the dead and dense fractions as Wilson intervals over the latents.

A context's tokens share a document, so contexts, not tokens, are the resampled unit. Past
MAX_GROUPS contexts, adjacent ones are summed in blocks (2, 4, ... contexts: a block bootstrap, a
little wider if anything), so the sums a pass keeps stay small whatever `max_tokens` is.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from saeq.ml.intervals import Statistic, group_bootstrap, ratio_of_sums, reflected, wilson
from saeq.specs.estimates import Estimate

MAX_GROUPS = 1024
GROUP_COLUMNS = (
    "n",  # ordinary tokens
    "sum_sq_x",
    "sum_sq_resid",
    "sum_cos",
    "sum_l0",
    "sum_l1",
    "n_loss",  # next-token predictions from ordinary positions
    "ce_clean",
    "ce_sae",
    "ce_zero",
    "kl_sae",
    "kl_zero",
)
"""The per-context sums, columns of `group_sums` (G, len(GROUP_COLUMNS))."""
COLUMN = {name: i for i, name in enumerate(GROUP_COLUMNS)}
BOOTSTRAP_SEED = 0
"""Fixed: an evaluation's intervals are a pure function of its sums (a resumed pass's equal an
uninterrupted one's)."""


def merge_adjacent(sums_G: Tensor) -> Tensor:
    """(G, ...) -> (ceil(G/2), ...): groups 2i and 2i+1 summed."""
    if sums_G.shape[0] % 2:
        sums_G = torch.cat([sums_G, sums_G.new_zeros(1, *sums_G.shape[1:])])
    return sums_G.reshape(-1, 2, *sums_G.shape[1:]).sum(1)


def metric_intervals(
    sums_GK: np.ndarray,
    sum_x_GD: np.ndarray,
    metrics: dict[str, float],
    *,
    contexts_per_group: int,
    n_latents: int,
    n_dead: int,
    n_dense: int,
) -> dict[str, Estimate]:
    """{metric name: Estimate} for the metrics `_finish` computed; each Estimate's value is the
    metric as reported."""
    unit = group_unit(contexts_per_group)
    out = {
        name: group_bootstrap(stat, len(sums_GK), unit=unit, seed=BOOTSTRAP_SEED, value=metrics[name])
        for name, stat in metric_statistics(sums_GK, sum_x_GD).items()
    }
    # FVU and explained variance are measured about the sample's own mean: the basic bootstrap
    # (saeq.ml.intervals.reflected), as for a train job's held-out FVU.
    for name in ("fvu", "explained_variance"):
        if name in out:
            out[name] = reflected(out[name])
    out["dead_fraction"] = wilson(n_dead, n_latents, unit="latents")
    out["dense_fraction"] = wilson(n_dense, n_latents, unit="latents")
    return out


def group_unit(contexts_per_group: int) -> str:
    """What one group of the sums is, plural (an Estimate's unit)."""
    return "contexts" if contexts_per_group == 1 else f"blocks of {contexts_per_group} contexts"


def metric_statistics(sums_GK: np.ndarray, sum_x_GD: np.ndarray) -> dict[str, Statistic]:
    """{metric name: the metric as a function of group weights} for the metrics bootstrapped over
    contexts (all but the fractions over latents); a paired comparison feeds two SAEs' to one
    resample (saeq.ml.intervals.paired_difference)."""
    col = {name: sums_GK[:, i] for name, i in COLUMN.items()}

    def per_token(name: str) -> Statistic:
        return ratio_of_sums(col[name], col["n"])

    def per_prediction(name: str) -> Statistic:
        return ratio_of_sums(col[name], col["n_loss"])

    def fvu(W_RG: np.ndarray) -> np.ndarray:
        n_R = W_RG @ col["n"]
        mean_RD = (W_RG @ sum_x_GD) / n_R[:, None]
        total_var_R = (W_RG @ col["sum_sq_x"]) / n_R - (mean_RD**2).sum(1)
        return (W_RG @ col["sum_sq_resid"]) / n_R / total_var_R

    clean, sae, zero = per_prediction("ce_clean"), per_prediction("ce_sae"), per_prediction("ce_zero")
    statistics: dict[str, Statistic] = {
        "mse": per_token("sum_sq_resid"),
        "fvu": fvu,
        "explained_variance": lambda W: 1.0 - fvu(W),
        "cossim": per_token("sum_cos"),
        "l0": per_token("sum_l0"),
        "l1": per_token("sum_l1"),
        "ce_loss_clean": clean,
        "ce_loss_with_sae": sae,
        "ce_loss_with_ablation": zero,
        "ce_loss_recovered": lambda W: (zero(W) - sae(W)) / (zero(W) - clean(W)),
        "delta_lm_loss": lambda W: sae(W) - clean(W),
        "kl_div_with_sae": per_prediction("kl_sae"),
        "kl_div_with_ablation": per_prediction("kl_zero"),
    }
    return statistics


def layer_fvu_intervals(
    sums_GK: np.ndarray,
    sum_x_GD: np.ndarray,
    layer_sums_G2L: np.ndarray,
    fvu_per_layer: list[float],
    *,
    contexts_per_group: int,
) -> list[Estimate]:
    """A crosscoder's FVU of each layer with its bootstrap interval over the same contexts: layer l
    is columns l*d..(l+1)*d of `sum_x_GD`, its sums of ||x_l||^2 and ||x_l - x_hat_l||^2 columns l
    and L + l of `layer_sums_G2L`."""
    n_G = sums_GK[:, COLUMN["n"]]
    L = len(fvu_per_layer)
    d = sum_x_GD.shape[1] // L

    def fvu(layer: int) -> Statistic:
        def statistic(W_RG: np.ndarray) -> np.ndarray:
            n_R = W_RG @ n_G
            mean_RD = (W_RG @ sum_x_GD[:, layer * d : (layer + 1) * d]) / n_R[:, None]
            total_var_R = (W_RG @ layer_sums_G2L[:, layer]) / n_R - (mean_RD**2).sum(1)
            return (W_RG @ layer_sums_G2L[:, L + layer]) / n_R / total_var_R

        return statistic

    unit = group_unit(contexts_per_group)
    return [
        reflected(group_bootstrap(fvu(layer), len(sums_GK), unit=unit, seed=BOOTSTRAP_SEED, value=value))
        for layer, value in enumerate(fvu_per_layer)
    ]
