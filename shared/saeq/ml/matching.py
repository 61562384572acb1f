"""Match the features of two SAEs of the same d_in: a one-to-one assignment of A's latents to B's
maximising the summed decoder cosine (Hungarian, scipy), confirmed by how well the matched pairs'
activations correlate on the same tokens. A feature of A is stable when its match has both a
decoder cosine and an activation correlation above the thresholds."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def decoder_cosines(W_dec_a_AD: Tensor, W_dec_b_BD: Tensor) -> Tensor:
    """Signed cosine between each of A's decoder rows and each of B's: (A, B). Signed: a latent
    writing the opposite direction is not the same feature."""
    a = W_dec_a_AD.detach().double()
    b = W_dec_b_BD.detach().double()
    a = a / a.norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = b / b.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return a @ b.T


def match_decoders(W_dec_a_AD: Tensor, W_dec_b_BD: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """-> (match_A, cosine_A): for each of A's latents its partner in B (-1: none, where B has fewer
    latents) and their decoder cosine (NaN: none), from the assignment maximising the total cosine."""
    cos_AB = decoder_cosines(W_dec_a_AD, W_dec_b_BD).cpu().numpy()
    rows, cols = linear_sum_assignment(cos_AB, maximize=True)
    match_A = np.full(cos_AB.shape[0], -1, dtype=np.int64)
    cosine_A = np.full(cos_AB.shape[0], np.nan)
    match_A[rows], cosine_A[rows] = cols, cos_AB[rows, cols]
    return match_A, cosine_A


def feature_splits(W_dec_narrow_ND: Tensor, W_dec_wide_WD: Tensor, *, min_cosine: float) -> dict[int, list[int]]:
    """Which of the narrower SAE's features split in the wider one (feature splitting, as in
    Bricken et al. 2023): each wide latent is a child of the narrow feature nearest it by decoder
    cosine, if that cosine is at least `min_cosine`; a feature with two or more children split.
    -> {narrow feature: its children, nearest first}, split features only."""
    cos_WN = decoder_cosines(W_dec_wide_WD, W_dec_narrow_ND)
    best_W, parent_W = cos_WN.max(dim=1)
    children: dict[int, list[tuple[float, int]]] = {}
    for w in torch.nonzero(best_W >= min_cosine).flatten().tolist():
        children.setdefault(int(parent_W[w]), []).append((float(best_W[w]), w))
    return {n: [w for _, w in sorted(kids, reverse=True)] for n, kids in sorted(children.items()) if len(kids) >= 2}


@dataclass
class PairCorrelation:
    """Running sums for the Pearson correlation of each matched pair's activations over tokens
    (float64: a latent that fires rarely has a small variance to resolve)."""

    match_A: np.ndarray

    def __post_init__(self) -> None:
        n_pairs = len(self.match_A)
        self._rows = torch.as_tensor(np.flatnonzero(self.match_A >= 0))
        self._cols = torch.as_tensor(self.match_A[self.match_A >= 0])
        self.n = 0
        self.sums = {name: torch.zeros(len(self._rows), dtype=torch.float64) for name in ("a", "b", "aa", "bb", "ab")}
        self._n_pairs = n_pairs
        self.fired_A = torch.zeros(n_pairs, dtype=torch.bool)
        """Which of A's latents fired on any token added (matched or not)."""

    def add(self, acts_a_NA: Tensor, acts_b_NB: Tensor) -> None:
        """Add N tokens' activations of both SAEs (the same tokens, in the same order)."""
        a = acts_a_NA[:, self._rows.to(acts_a_NA.device)].double()
        b = acts_b_NB[:, self._cols.to(acts_b_NB.device)].double()
        for name, value in (("a", a), ("b", b), ("aa", a * a), ("bb", b * b), ("ab", a * b)):
            self.sums[name] += value.sum(0).cpu()
        self.n += a.shape[0]
        self.fired_A |= (acts_a_NA != 0).any(0).cpu()

    def correlations(self) -> np.ndarray:
        """(A,) Pearson correlation per latent of A with its match; NaN with no match, no tokens, or
        a side that never varied (a dead latent)."""
        s, n = self.sums, max(self.n, 1)
        cov = s["ab"] / n - (s["a"] / n) * (s["b"] / n)
        var_a = s["aa"] / n - (s["a"] / n) ** 2
        var_b = s["bb"] / n - (s["b"] / n) ** 2
        denom = (var_a * var_b).sqrt()
        corr = torch.where(denom > 1e-20, cov / denom, torch.full_like(cov, float("nan")))
        out = np.full(self._n_pairs, np.nan)
        out[self._rows.numpy()] = corr.numpy() if self.n else np.nan
        return out
