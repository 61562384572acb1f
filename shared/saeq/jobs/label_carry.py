"""Carry another label job's labels over to this SAE's matching features (a checkpoint or a retrain
of the same config): features matched one-to-one on decoder cosine (saeq.ml.matching, Hungarian),
confirmed on their activations' correlation over the two feature indexes' tokens when both indexed
the same tokens (else the match is decoder-only, and says so). A stable match carries the other
job's best label, marked `carried_from`: it never replaces this job's own labels nor is scored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from saeq.ml.features import FeatureIndex
from saeq.ml.matching import match_decoders

CarryMethod = Literal["decoder+activations", "decoder only"]


@dataclass(frozen=True)
class CarryMatch:
    """This SAE's (A's) features matched to the other's (B's)."""

    match_A: np.ndarray
    """Per feature of A, its partner in B (-1: none, where B is narrower)."""
    cosine_A: np.ndarray
    """The decoder cosine to the partner (NaN: none)."""
    correlation_A: np.ndarray
    """The activations' Pearson correlation over the shared index tokens (NaN: not measured, or a
    side that never fired)."""
    stable_A: np.ndarray
    method: CarryMethod


def decoder_rows(W_dec: Tensor) -> Tensor:
    """(d_sae, -1): a crosscoder's decoder (d_sae, layers, d) as one direction per feature."""
    return W_dec.detach().reshape(W_dec.shape[0], -1)


def index_correlations(index_a: FeatureIndex, index_b: FeatureIndex, match_A: np.ndarray) -> np.ndarray | None:
    """(A,) each matched pair's activation correlation over the ordinary tokens both indexes hold;
    None when they did not index the same tokens (nothing to confirm the match on)."""
    same = (
        index_a.token_ids_CT.shape == index_b.token_ids_CT.shape
        and torch.equal(index_a.token_ids_CT, index_b.token_ids_CT)
        and torch.equal(index_a.sinks_CT, index_b.sinks_CT)
    )
    if not same:
        return None
    n = float(max(index_a.n_ordinary, 1))  # sinks hold no activations: zeros on every other token
    out = np.full(len(match_A), np.nan)
    for a in np.flatnonzero(match_A >= 0).tolist():
        pos_a, val_a = index_a.activations(a)
        pos_b, val_b = index_b.activations(int(match_A[a]))
        va, vb = val_a.double().numpy(), val_b.double().numpy()
        _, ia, ib = np.intersect1d(pos_a.numpy(), pos_b.numpy(), assume_unique=True, return_indices=True)
        mean_a, mean_b = va.sum() / n, vb.sum() / n
        cov = float((va[ia] * vb[ib]).sum()) / n - mean_a * mean_b
        var_a, var_b = (va * va).sum() / n - mean_a**2, (vb * vb).sum() / n - mean_b**2
        denom = float(np.sqrt(max(var_a, 0.0) * max(var_b, 0.0)))
        if denom > 1e-20:
            out[a] = cov / denom
    return out


def match_features(
    W_dec_a: Tensor,
    W_dec_b: Tensor,
    *,
    index_a: FeatureIndex | None,
    index_b: FeatureIndex | None,
    min_cosine: float,
    min_correlation: float,
) -> CarryMatch:
    """A's features matched to B's; stable: decoder cosine >= min_cosine and, where the indexes
    share their tokens, activation correlation >= min_correlation (else on the cosine alone)."""
    match_A, cosine_A = match_decoders(decoder_rows(W_dec_a), decoder_rows(W_dec_b))
    corr_A = None if index_a is None or index_b is None else index_correlations(index_a, index_b, match_A)
    with np.errstate(invalid="ignore"):
        stable_A = (match_A >= 0) & (cosine_A >= min_cosine)
        if corr_A is not None:
            stable_A &= corr_A >= min_correlation
    method: CarryMethod = "decoder only" if corr_A is None else "decoder+activations"
    corr = np.full(len(match_A), np.nan) if corr_A is None else corr_A
    return CarryMatch(match_A, cosine_A, corr, stable_A, method)


def best_labels(records: list[dict]) -> dict[int, dict]:
    """feature -> its record with the best AUC (detection, else embedding) among explainers."""
    best: dict[int, tuple[float, dict]] = {}
    for r in records:
        scores = r.get("scores") or {}
        auc = (scores.get("detection") or scores.get("embedding") or {}).get("auc") or 0.0
        if r["feature"] not in best or auc > best[r["feature"]][0]:
            best[r["feature"]] = (auc, r)
    return {f: r for f, (_, r) in best.items()}


def _finite(x: float) -> float | None:
    return None if np.isnan(x) else round(float(x), 6)


def other_feature(m: CarryMatch, feature: int, *, label_job: str, other_best: dict[int, dict]) -> dict | None:
    """What a feature page shows of `feature` in the other SAE: its match, the match strength, and
    the other job's label where the match is stable (None: no partner)."""
    partner = int(m.match_A[feature])
    if partner < 0:
        return None
    carried = other_best.get(partner) if bool(m.stable_A[feature]) else None
    return {
        "label_job": label_job,
        "feature": partner,
        "decoder_cosine": _finite(m.cosine_A[feature]),
        "activation_correlation": _finite(m.correlation_A[feature]),
        "stable": bool(m.stable_A[feature]),
        "method": m.method,
        "label": None if carried is None else carried["label"],
    }


def carried_labels(m: CarryMatch, other_records: list[dict], *, label_job: str) -> dict[int, dict]:
    """feature of A -> `carried_from` for each stable match whose partner the other job labelled."""
    other_best = best_labels(other_records)
    out = {}
    for a in np.flatnonzero(m.stable_A).tolist():
        b = int(m.match_A[a])
        if b in other_best:
            r = other_best[b]
            out[a] = {
                "label_job": label_job,
                "feature": b,
                "label": r["label"],
                "description": r.get("description"),
                "explainer": r.get("explainer"),
                "decoder_cosine": _finite(m.cosine_A[a]),
                "activation_correlation": _finite(m.correlation_A[a]),
                "method": m.method,
            }
    return out


def with_carried(records: list[dict], carried: dict[int, dict]) -> list[dict]:
    """This job's records, each of a carried feature with `carried_from` beside its own label."""
    return [r | {"carried_from": carried[r["feature"]]} if r["feature"] in carried else r for r in records]


def carry_summary(m: CarryMatch, carried: dict[int, dict], records: list[dict], **provenance) -> dict:
    """What the manifest records of the carry: the method, thresholds' outcome and counts."""
    labelled = {r["feature"] for r in records}
    return {
        **provenance,
        "method": m.method,
        "n_matched": int((m.match_A >= 0).sum()),
        "n_stable": int(m.stable_A.sum()),
        "n_carried": len(carried),
        "n_carried_to_labelled": len(labelled & set(carried)),
        "mean_cosine": _finite(float(np.nanmean(m.cosine_A))) if (m.match_A >= 0).any() else None,
    }
