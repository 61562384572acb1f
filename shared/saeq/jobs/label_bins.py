"""Features by firing rate: which features a label job draws from each density bin (`select:
{by: density_bins}`), and its scores per bin. A feature's density is the label index's: the
fraction of its ordinary tokens the feature fires on."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from saeq.ml.features import FeatureIndex
from saeq.ml.intervals import bootstrap_mean
from saeq.specs.label import DENSITY_DECADES, DensityBins, JudgeControl, LabelSpec
from saeq.specs.label_bins import BinScore, DensityBinScores


def activating_contexts(index: FeatureIndex) -> torch.Tensor:
    """(d_sae,) number of contexts in which each feature fires."""
    C, T = index.token_ids_CT.shape
    feature_of = torch.repeat_interleave(torch.arange(index.d_sae), index.feature_ptr.diff())
    fires = torch.zeros(index.d_sae * C, dtype=torch.bool)  # (feature, context) pairs, no sort needed
    fires[feature_of * C + index.flat_pos.long() // T] = True
    return fires.view(index.d_sae, C).sum(1)


def density_bin_of(density: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Bin of each density: i when edges[i] <= d < edges[i + 1] (the last bin's upper edge
    included); -1 outside every bin."""
    edges_E = np.asarray(edges, np.float64)
    bin_D = np.searchsorted(edges_E, density, side="right") - 1
    bin_D[density == edges_E[-1]] = len(edges_E) - 2
    bin_D[(bin_D < 0) | (bin_D >= len(edges_E) - 1)] = -1
    return bin_D


def _eligible_bins(index: FeatureIndex, edges: Sequence[float], min_activating: int) -> np.ndarray:
    """(d_sae,) each feature's bin, -1 for a feature outside the bins or firing in fewer than
    `min_activating` contexts."""
    density_D = index.density().double().numpy()
    bin_D = density_bin_of(density_D, edges)
    bin_D[activating_contexts(index).numpy() < min_activating] = -1
    return bin_D


def select_density_bins(index: FeatureIndex, select: DensityBins, min_activating: int) -> list[int]:
    """Up to `per_bin` features drawn uniformly, without replacement, from each bin's eligible
    features (a pure function of the index and `select.seed`); bin by bin from the rarest, the
    densest of a bin first."""
    bin_D = _eligible_bins(index, select.edges, min_activating)
    density_D = index.density().double().numpy()
    rng = np.random.default_rng(select.seed)
    out: list[int] = []
    for b in range(len(select.edges) - 1):
        members = np.flatnonzero(bin_D == b)
        drawn = rng.choice(members, size=min(select.per_bin, members.size), replace=False)
        out += sorted(drawn.tolist(), key=lambda f: (-density_D[f], f))
    return out


def density_bin_scores(
    index: FeatureIndex, records: list[dict], spec: LabelSpec, controls: Sequence[JudgeControl] = ()
) -> list[DensityBinScores]:
    """Per bin (the spec's `select` edges, else decades): eligible and labelled features, and per
    explainer and scorer the mean AUC over the bin's scored features with a 95% bootstrap interval
    over those features. A scorer its controls flag keeps its means, marked with the flag."""
    edges = spec.select.edges if spec.select is not None else list(DENSITY_DECADES)
    eligible_D = _eligible_bins(index, edges, spec.min_activating)
    labelled_D = density_bin_of(index.density().double().numpy(), edges)
    flags = {c.scorer: c.flag for c in controls if not c.calibrated}
    explainers = list(dict.fromkeys(r["explainer"] for r in records))
    scorers = list(dict.fromkeys(s for r in records for s in r["scores"]))
    out = []
    for b, (low, high) in enumerate(zip(edges, edges[1:], strict=False)):
        in_bin = [r for r in records if labelled_D[r["feature"]] == b]
        scores = []
        for explainer in explainers:
            for scorer in scorers:
                aucs = [
                    r["scores"][scorer]["auc"]
                    for r in in_bin
                    if r["explainer"] == explainer and (r["scores"].get(scorer) or {}).get("auc") is not None
                ]
                if aucs:
                    auc = bootstrap_mean(np.asarray(aucs), np.ones(len(aucs)), unit="features", seed=b)
                    scores.append(BinScore(explainer=explainer, scorer=scorer, auc=auc, flag=flags.get(scorer)))
        out.append(
            DensityBinScores(
                low=low,
                high=high,
                n_eligible=int((eligible_D == b).sum()),
                n_labelled=len({r["feature"] for r in in_bin}),
                scores=scores,
            )
        )
    return out
