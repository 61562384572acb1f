"""What the browser shows of a feature: the logits its decoder direction moves, a summary row with
its best label, and a page whose windows and histogram match the index."""

from __future__ import annotations

import torch

from saeq.ml.feature_pages import effects_of, feature_page, logit_effects, summaries
from saeq.ml.features import FeatureIndex
from saeq.ml.sae import SparseAutoencoder


def test_logit_effects_are_the_top_and_bottom_of_the_unembedded_direction():
    torch.manual_seed(0)
    sae = SparseAutoencoder(8, 20, "topk", k=2)
    W_U, gain = torch.randn(50, 8), torch.rand(8) + 0.5
    hi_ids, hi_vals, lo_ids, lo_vals = logit_effects(sae, W_U, gain, top=3, batch=7)
    logits = (sae.W_dec.detach() * gain) @ W_U.T  # (20, 50)
    assert torch.equal(hi_ids, logits.topk(3, dim=1).indices)
    assert torch.allclose(lo_vals, logits.topk(3, dim=1, largest=False).values, atol=1e-5)
    assert torch.all(hi_vals[:, 0] >= hi_vals[:, 1])
    pieces = effects_of(4, (hi_ids, hi_vals, lo_ids, lo_vals), lambda ids: [f"t{i}" for i in ids])
    assert pieces["positive"][0] == [f"t{int(hi_ids[4, 0])}", round(float(hi_vals[4, 0]), 4)]


def _index():
    """6 contexts of 8 tokens; feature 0 fires on token 5 with strength = context + 1; feature 2
    never fires."""
    ids = torch.arange(48).view(6, 8) % 11
    acts = torch.zeros(6, 8, 3)
    for c in range(6):
        acts[c, 5, 0] = c + 1.0
        acts[c, 2:4, 1] = 0.5
    return FeatureIndex.from_dense(
        ids, torch.arange(6).repeat_interleave(8).view(6, 8), torch.zeros(6, 8, dtype=torch.bool), acts
    )


def test_summary_rows_carry_the_best_scored_label_and_every_feature():
    records = [
        {"feature": 0, "explainer": "a", "label": "weak", "scores": {"detection": {"auc": 0.6}}},
        {"feature": 0, "explainer": "b", "label": "strong", "scores": {"embedding": {"auc": 0.9}}},
        {"feature": 1, "explainer": "a", "label": "unscored", "scores": {}},
    ]
    rows = summaries(_index(), records)
    assert [r["feature"] for r in rows] == [0, 1, 2]
    assert rows[0]["label"] == "strong" and rows[0]["score"] == 0.9 and len(rows[0]["labels"]) == 2
    assert rows[1]["label"] == "unscored" and rows[1]["score"] is None
    assert rows[2]["label"] is None and rows[2]["density"] == 0 and rows[2]["max_activation"] == 0


def test_feature_page_windows_and_histogram_match_the_index():
    page = feature_page(
        _index(),
        0,
        lambda ids: [f"<{i}>" for i in ids],
        n_top=2,
        n_bins=2,
        per_bin=1,
        before=2,
        after=1,
        effects=None,
        generator=torch.Generator().manual_seed(0),
    )
    assert page["n_activations"] == 6 and sum(page["histogram"]) == 6
    assert [max(w["acts"]) for w in page["top"]] == [6.0, 5.0]
    top = page["top"][0]
    assert len(top["tokens"]) == len(top["acts"]) == 4 and top["acts"][2] == 6.0 and top["context"] == 5
    assert len(page["quantiles"]) == 2 and all(len(b) == 1 for b in page["quantiles"])
    assert {w["context"] for b in page["quantiles"] for w in b}.isdisjoint({5, 4})
    silent = feature_page(
        _index(), 2, str, n_top=2, n_bins=2, per_bin=1, before=2, after=1, effects=None, generator=torch.Generator()
    )
    assert silent["histogram"] == [] and silent["top"] == []
