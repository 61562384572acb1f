"""95% intervals for a trained SAE's held-out figures (saeq.ml.training.measure): FVU, MSE and L0
bootstrapped over groups of contiguous held-out tokens, whose sums the measuring pass keeps; the
dead and dense fractions as Wilson intervals over the latents.

The groups are the held-out contexts when the caller says which context each row comes from (a
harvest's held-out tail is whole contexts, in harvest order: saeq.ml.activations), else blocks of
BLOCK_TOKENS contiguous rows. Tokens of one context share a document and a topic, so a per-token
bootstrap would count correlated tokens as independent and give too narrow an interval; a block
of contiguous rows is a context or two in harvest order. Past MAX_GROUPS groups, adjacent ones are
summed into blocks (a block bootstrap: if anything a little wider), so the sums stay small. FVU's
interval is the basic bootstrap (see HeldOutSums.estimates), the others percentile intervals.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from saeq.ml.intervals import Statistic, group_bootstrap, ratio_of_sums, reflected, wilson
from saeq.specs.estimates import Estimate

BLOCK_TOKENS = 128
"""Contiguous held-out rows per group when the contexts are not given (the demo's context length)."""
MAX_GROUPS = 1024
BOOTSTRAP_SEED = 0
"""Fixed: a run's intervals are a pure function of its held-out sums."""


def token_groups(n_rows: int, contexts: Tensor | None) -> tuple[Tensor, int, str]:
    """(group id of each row (n_rows,) int64 in 0..G-1, G, what a group is, plural) for rows in
    harvest order; `contexts` (n_rows,): the context each row comes from, equal for a context's
    rows, which are contiguous."""
    if contexts is None:
        ids, unit, base = torch.arange(n_rows) // BLOCK_TOKENS, f"blocks of {BLOCK_TOKENS} tokens", "tokens"
        per_block = BLOCK_TOKENS
    else:
        if contexts.shape != (n_rows,):
            raise ValueError(f"contexts must be ({n_rows},), not {tuple(contexts.shape)}")
        ids = torch.unique_consecutive(contexts.cpu(), return_inverse=True)[1]
        unit, base, per_block = "contexts", "contexts", 1
    n_groups = int(ids[-1]) + 1 if n_rows else 0
    merge = math.ceil(n_groups / MAX_GROUPS) if n_groups else 1
    if merge > 1:
        ids, n_groups = ids // merge, math.ceil(n_groups / merge)
        unit = f"blocks of {merge * per_block} {base}"
    return ids, n_groups, unit


class HeldOutSums:
    """Per-group sums of the figures measure reports, filled chunk by chunk: tokens, squared
    error, squared distance to the held-out mean, active latents, and the rows' offset from that
    mean (so a resample's FVU is about its own mean)."""

    def __init__(self, ids: Tensor, n_groups: int, unit: str, d_target: int, device: str):
        dtype = torch.float32 if device.startswith("mps") else torch.float64
        self.ids, self.n_groups, self.unit = ids.to(device), n_groups, unit
        self.sums_G4 = torch.zeros(n_groups, 4, dtype=dtype, device=device)  # n, err, var, l0
        self.centred_GD = torch.zeros(n_groups, d_target, dtype=dtype, device=device)

    def add(self, start: int, err_c: Tensor, var_c: Tensor, l0_c: Tensor, centred_cD: Tensor) -> None:
        """Rows start..start+c: each row's squared error, squared distance to the held-out mean,
        active latents, and its offset from that mean."""
        ids = self.ids[start : start + err_c.shape[0]]
        dt = self.sums_G4.dtype
        cols = torch.stack([torch.ones_like(err_c), err_c, var_c, l0_c], dim=1)  # (c, 4)
        self.sums_G4.index_add_(0, ids, cols.to(dt))
        self.centred_GD.index_add_(0, ids, centred_cD.to(dt))

    def estimates(self, fvu: float, mse: float, l0: float) -> dict[str, Estimate]:
        """FVU, MSE, L0 with bootstrap intervals over the groups; each value the figure as reported."""
        sums = self.sums_G4.double().cpu().numpy()
        n_G, err_G, var_G, l0_G = sums.T
        centred_GD = self.centred_GD.double().cpu().numpy()

        def fvu_of(W_RG: np.ndarray) -> np.ndarray:
            n_R = W_RG @ n_G
            shift_RD = (W_RG @ centred_GD) / n_R[:, None]  # the resample's mean minus the held-out mean
            return (W_RG @ err_G) / ((W_RG @ var_G) - n_R * (shift_RD**2).sum(1))

        statistics: dict[str, tuple[Statistic, float]] = {
            "fvu": (fvu_of, fvu),
            "mse": (ratio_of_sums(err_G, n_G), mse),
            "l0": (ratio_of_sums(l0_G, n_G), l0),
        }
        out = {
            name: group_bootstrap(stat, self.n_groups, unit=self.unit, seed=BOOTSTRAP_SEED, value=value)
            for name, (stat, value) in statistics.items()
        }
        # FVU's denominator is the spread about the sample's own mean, which runs below the spread
        # about the true mean by about (share of the variance between contexts) / (contexts): FVU
        # comes out that much high, and each resample, about its own mean, that much again above
        # it. The percentile interval then sits twice the bias above the truth (in
        # tests/saeq/ml/test_held_out.py's setup it covers ~72%); reflecting the quantiles about
        # the value (the basic bootstrap) takes the bias out once instead (~95%).
        out["fvu"] = reflected(out["fvu"])
        return out


def latent_fractions(dead_validation: int, dense: int, d_sae: int, dead_training: float) -> dict[str, Estimate]:
    """Wilson intervals over the latents: never firing on the held-out tokens, dense there, and
    dead at the end of training (`dead_training`, a fraction; NaN: not known, no estimate)."""
    out = {
        "dead_fraction_validation": wilson(dead_validation, d_sae, unit="latents"),
        "dense_fraction": wilson(dense, d_sae, unit="latents"),
    }
    if not math.isnan(dead_training):
        out["dead_fraction"] = wilson(round(dead_training * d_sae), d_sae, unit="latents")
    return out
