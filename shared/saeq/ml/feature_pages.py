"""What the feature browser shows of each feature, computed once by the label job: a summary row per
feature (for the searchable list) and a page per feature (activation histogram, top and quantile
windows with per-token activations, the decoder direction's logit effects), stored in chunks."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from saeq.ml.explainers import Decode
from saeq.ml.features import Example, FeatureIndex
from saeq.ml.sae import SparseAutoencoder

PAGES_FORMAT = "saeq.feature-pages/1"
CHUNK = 256
"""Features per stored chunk: one small object per request, not one object per feature."""
HISTOGRAM_BINS = 24


def output_directions(sae: SparseAutoencoder) -> Tensor:
    """(d_sae, d_model) what each feature writes into the stream: its decoder row; a crosscoder's,
    the block of its last layer (the one whose write reaches the logits directly)."""
    W_dec = sae.W_dec.detach().float().cpu()
    n_layers = getattr(sae, "n_layers", None)
    return W_dec if n_layers is None else W_dec.view(sae.d_sae, n_layers, -1)[:, -1]


def logit_effects(
    sae: SparseAutoencoder, unembed_VD: Tensor, final_norm_D: Tensor | None, *, top: int, batch: int = 512
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For each feature's decoder direction d (its row of `output_directions`): the tokens
    whose logits it raises and lowers most, `W_U (g * d)`, with g the final norm's gain (the
    direction's effect on the logits, skipping the norm's rescaling, as Neuronpedia and SAELens's
    dashboards do). -> (top ids (S, top), their values, bottom ids, their values)."""
    W_dec_SD = output_directions(sae)
    W_U = unembed_VD.detach().float().cpu()
    gain = final_norm_D.detach().float().cpu() if final_norm_D is not None else torch.ones(W_U.shape[1])
    parts = ([], [], [], [])
    for s0 in range(0, W_dec_SD.shape[0], batch):
        logits = (W_dec_SD[s0 : s0 + batch] * gain) @ W_U.T  # (s, V)
        hi, lo = logits.topk(top, dim=1), logits.topk(top, dim=1, largest=False)
        for part, t in zip(parts, (hi.indices, hi.values, lo.indices, lo.values), strict=False):
            part.append(t)
    hi_ids, hi_values, lo_ids, lo_values = (torch.cat(p) for p in parts)
    return hi_ids, hi_values, lo_ids, lo_values


def summaries(index: FeatureIndex, records: list[dict]) -> list[dict]:
    """One row per feature: density, max activation, and its labels with their best score."""
    density, max_act = index.density().tolist(), index.max_act().tolist()
    labels: dict[int, list[dict]] = {}
    for r in records:
        scores = r.get("scores") or {}
        auc = next(
            (
                scores[k]["auc"]
                for k in ("detection", "embedding", "fuzzing")
                if scores.get(k, {}).get("auc") is not None
            ),
            None,
        )
        labels.setdefault(r["feature"], []).append({"explainer": r["explainer"], "label": r["label"], "auc": auc})
    rows = []
    for f in range(index.d_sae):
        ls = labels.get(f, [])
        best = max(ls, key=lambda x: -1 if x["auc"] is None else x["auc"], default=None)
        rows.append(
            {
                "feature": f,
                "density": density[f],
                "max_activation": max_act[f],
                "label": best["label"] if best else None,
                "score": best["auc"] if best else None,
                "labels": ls,
            }
        )
    return rows


def _window(ex: Example, decode: Decode) -> dict:
    return {
        "tokens": decode(ex.token_ids),
        "acts": [round(a, 4) for a in ex.acts],
        "doc_id": ex.doc_id,
        "context": ex.context,
        "start": ex.start,
    }


def feature_page(
    index: FeatureIndex,
    feature: int,
    decode: Decode,
    *,
    n_top: int,
    n_bins: int,
    per_bin: int,
    before: int,
    after: int,
    effects: dict | None,
    generator: torch.Generator,
) -> dict:
    """Everything the feature page draws except its labels (those come from the summary row)."""
    _, values = index.activations(feature)
    hist, edges = [], []
    if values.numel():
        top = float(values.max())
        counts = torch.histc(values, bins=HISTOGRAM_BINS, min=0.0, max=top if top > 0 else 1.0)
        hist = counts.long().tolist()
        edges = [top * i / HISTOGRAM_BINS for i in range(HISTOGRAM_BINS + 1)]
    tops = index.top_examples(feature, n_top, before=before, after=after)
    quantiles = index.quantile_examples(
        feature, per_bin, n_bins, before=before, after=after, exclude={e.context for e in tops}, generator=generator
    )
    return {
        "feature": feature,
        "n_activations": int(values.numel()),
        "histogram": hist,
        "histogram_edges": edges,
        "top": [_window(e, decode) for e in tops],
        "quantiles": [[_window(e, decode) for e in b] for b in quantiles],
        "logit_effects": effects,
    }


def effects_of(feature: int, effects: tuple[Tensor, Tensor, Tensor, Tensor], decode: Decode) -> dict:
    hi_ids, hi_vals, lo_ids, lo_vals = (t[feature] for t in effects)
    return {
        "positive": [[tok, round(float(v), 4)] for tok, v in zip(decode(hi_ids.tolist()), hi_vals, strict=False)],
        "negative": [[tok, round(float(v), 4)] for tok, v in zip(decode(lo_ids.tolist()), lo_vals, strict=False)],
    }


def n_chunks(d_sae: int) -> int:
    return math.ceil(d_sae / CHUNK)
