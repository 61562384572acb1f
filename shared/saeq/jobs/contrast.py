"""Contrastive search: the SAE's features whose per-text activation (max or mean over a text's
ordinary tokens) separates two sets of texts. Features are ranked by AUROC on a selection half of
each set and scored on the held-out half, where the choice cannot have flattered them: detection
AUROC and Cohen's d, each with a 95% bootstrap interval over the held-out texts."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from scipy.stats import rankdata

from saeq.errors import InvalidSpec
from saeq.ml.features import read_hooks
from saeq.ml.intervals import group_bootstrap
from saeq.ml.models import LoadedModel
from saeq.ml.sae import SparseAutoencoder
from saeq.ml.sinks import SinkReference, sink_mask
from saeq.specs.contrast import ContrastFeature
from saeq.specs.estimates import Estimate

Aggregate = Literal["max", "mean"]
BATCH_TOKENS = 2048
"""Tokens per forward pass (texts of similar length batched, right-padded)."""


@torch.inference_mode()
def text_activations(
    lm: LoadedModel,
    sae: SparseAutoencoder,
    hook: str | Sequence[str],
    texts: Sequence[Sequence[int]],
    *,
    sinks: SinkReference | None,
    aggregate: Aggregate,
    field: str,
) -> np.ndarray:
    """(N, d_sae) float32: each text's max or mean activation of every feature over its tokens that
    the sink rule keeps. A text with no such token is refused, naming `{field}.{i}`. `hook` is one
    hook, or the hooks a coder reads side by side (a crosscoder's layers: coder_input_hooks), whose
    first hook's norms the sink rule reads."""
    hooks = [hook] if isinstance(hook, str) else list(hook)
    if sae.d_in != lm.d_model * len(hooks):
        raise InvalidSpec(
            f"the SAE reads d_in={sae.d_in} but {', '.join(hooks)} give {lm.d_model * len(hooks)} (d_model={lm.d_model})",
            field="sae",
        )
    sae = sae.to(lm.device).eval()
    out_NS = np.zeros((len(texts), sae.d_sae), np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    start = 0
    while start < len(order):
        stop = start + 1  # longest text in the batch last: the batch's width is its length
        while stop < len(order) and (stop - start + 1) * len(texts[order[stop]]) <= BATCH_TOKENS:
            stop += 1
        batch = order[start:stop]
        T = len(texts[batch[-1]])
        # Right padding changes nothing before it: attention is causal.
        ids_BT = torch.tensor([list(texts[i]) + [texts[i][0]] * (T - len(texts[i])) for i in batch], device=lm.device)
        x_BTD = read_hooks(lm, hooks, ids_BT).reshape(len(batch), T, -1)
        lengths_B = torch.tensor([len(texts[i]) for i in batch], device=lm.device)
        positions_T = torch.arange(T, device=lm.device)
        keep_BT = positions_T[None, :] < lengths_B[:, None]
        if sinks is not None:
            norms_BT = x_BTD[..., : lm.d_model].norm(dim=-1)
            keep_BT &= ~sink_mask(positions_T[None, :], norms_BT, sinks.median_norm, sinks.norm_factor)
        for b, i in enumerate(batch):
            if not keep_BT[b].any():
                raise InvalidSpec(
                    f"text {i} has no token the sink rule keeps ({len(texts[i])} tokens): give a longer text",
                    field=f"{field}.{i}",
                )
        acts_BTS = sae.encode(x_BTD.reshape(len(batch) * T, -1)).reshape(len(batch), T, -1)
        if aggregate == "max":
            agg_BS = acts_BTS.masked_fill(~keep_BT[..., None], -math.inf).amax(dim=1)
        else:
            agg_BS = (acts_BTS * keep_BT[..., None]).sum(dim=1) / keep_BT.sum(dim=1, keepdim=True)
        out_NS[batch] = agg_BS.float().cpu().numpy()
        start = stop
    return out_NS


def auroc_columns(pos_NS: np.ndarray, neg_MS: np.ndarray) -> np.ndarray:
    """(S,) AUROC of each column for telling pos rows from neg rows (ties count half): the
    Mann-Whitney U over n*m, from ranks in the pooled column."""
    n, m = len(pos_NS), len(neg_MS)
    ranks = rankdata(np.concatenate([pos_NS, neg_MS]), axis=0)  # (n+m, S), ties averaged
    return (ranks[:n].sum(axis=0) - n * (n + 1) / 2) / (n * m)


def held_out_split(n: int, held_out: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(selection, held-out) indices of n texts: a seeded shuffle, at least 2 texts on each side."""
    n_held = min(max(2, round(n * held_out)), n - 2)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_held:]), np.sort(perm[:n_held])


def contrast_features(
    acts_a_NS: np.ndarray, acts_b_MS: np.ndarray, *, top_k: int, held_out: float = 0.5, seed: int = 0
) -> tuple[list[ContrastFeature], list[ContrastFeature]]:
    """(higher on a, higher on b): the top_k features each way by selection-half AUROC (ties broken
    by the difference of means), each scored on the held-out halves."""
    if len(acts_a_NS) < 4 or len(acts_b_MS) < 4:
        raise InvalidSpec(
            f"each set needs at least 4 texts (2 to choose on, 2 held out); got {len(acts_a_NS)} and {len(acts_b_MS)}",
            field="a" if len(acts_a_NS) < 4 else "b",
        )
    sel_a, held_a = held_out_split(len(acts_a_NS), held_out, seed)
    sel_b, held_b = held_out_split(len(acts_b_MS), held_out, seed + 1)
    auc_S = auroc_columns(acts_a_NS[sel_a], acts_b_MS[sel_b])
    gap_S = acts_a_NS[sel_a].mean(0) - acts_b_MS[sel_b].mean(0)
    by_a = np.lexsort((-gap_S, -auc_S))[:top_k]  # last key sorts first
    by_b = np.lexsort((gap_S, auc_S))[:top_k]
    xa, xb = acts_a_NS[held_a], acts_b_MS[held_b]

    def scored(f: int, higher_on: Literal["a", "b"]) -> ContrastFeature:
        own, other = (xa[:, f], xb[:, f]) if higher_on == "a" else (xb[:, f], xa[:, f])
        sel_auc = float(auc_S[f]) if higher_on == "a" else 1.0 - float(auc_S[f])
        return ContrastFeature(
            feature=int(f),
            higher_on=higher_on,
            selection_auroc=sel_auc,
            held_out_auroc=detection_auroc(own, other, seed=seed),
            held_out_cohens_d=cohens_d(own, other, seed=seed),
            mean_a=float(xa[:, f].mean()),
            mean_b=float(xb[:, f].mean()),
        )

    return [scored(f, "a") for f in by_a], [scored(f, "b") for f in by_b]


def detection_auroc(own_N: np.ndarray, other_M: np.ndarray, *, seed: int = 0) -> Estimate:
    """AUROC of telling `own` texts from `other` texts by the value, bootstrapped over all of them
    (a resample's AUROC weighs each pair by how often both texts were drawn)."""
    n = len(own_N)
    wins_NM = (own_N[:, None] > other_M[None, :]) + 0.5 * (own_N[:, None] == other_M[None, :])

    def statistic(W_RG: np.ndarray) -> np.ndarray:
        wa, wb = W_RG[:, :n], W_RG[:, n:]
        return ((wa @ wins_NM) * wb).sum(1) / (wa.sum(1) * wb.sum(1))

    return group_bootstrap(statistic, n + len(other_M), unit="held-out texts", seed=seed)


def cohens_d(own_N: np.ndarray, other_M: np.ndarray, *, seed: int = 0) -> Estimate | None:
    """(mean own - mean other) / pooled SD, bootstrapped over the texts; None when both are constant."""
    n = len(own_N)
    x = np.concatenate([own_N, other_M]).astype(np.float64)

    def statistic(W_RG: np.ndarray) -> np.ndarray:
        (ka, ma, va), (kb, mb, vb) = _moments(W_RG[:, :n], x[:n]), _moments(W_RG[:, n:], x[n:])
        pooled = np.sqrt(np.clip((ka * va + kb * vb) / (ka + kb - 2), 0, None))
        return (ma - mb) / pooled

    with np.errstate(divide="ignore", invalid="ignore"):
        point = float(statistic(np.ones((1, len(x))))[0])
    if not math.isfinite(point):
        return None
    return group_bootstrap(statistic, len(x), unit="held-out texts", seed=seed, value=point)


def _moments(w_RN: np.ndarray, x_N: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, mean, population variance) of x under each row of weights."""
    k = w_RN.sum(1)
    mean = (w_RN @ x_N) / k
    return k, mean, (w_RN @ x_N**2) / k - mean**2
