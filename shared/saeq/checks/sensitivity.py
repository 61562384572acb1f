"""Sensitivity: a feature that fires on an English article, does it fire on the same article in
another language? Articles are paired by title (exact, then case- and accent-folded)."""

from __future__ import annotations

import unicodedata
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from saeq.ml.intervals import group_bootstrap, ratio_of_sums, wilson


def fold_title(title: str) -> str:
    decomposed = unicodedata.normalize("NFKD", title.casefold())
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).split())


def pair_titles(english: Sequence[str | None], other: Sequence[str | None]) -> dict[int, int]:
    """English index -> other-language index of the article with the same (folded) title;
    titles that fold to the same string on either side, and articles without one, are left unpaired."""

    def unique(titles: Sequence[str | None]) -> dict[str, int]:
        seen: dict[str, int | None] = {}
        for i, t in enumerate(titles):
            if t is None:
                continue
            k = fold_title(t)
            seen[k] = None if k in seen else i
        return {k: i for k, i in seen.items() if i is not None}

    en, ot = unique(english), unique(other)
    return {en[k]: ot[k] for k in en.keys() & ot.keys()}


def sensitivity(en_max_PS: Tensor, other_max_PS: Tensor, *, max_doc_share: float) -> dict:
    """Row p of both matrices is the same article (English, other language); entries are each
    feature's largest activation. For every feature firing on between 1 and `max_doc_share` of
    the English articles: recall = share of those articles whose other version it fires on;
    false-positive rate = share of the other articles' versions it fires on."""
    P = en_max_PS.shape[0]
    en_fires = en_max_PS > 0
    ot_fires = other_max_PS > 0
    n_en_S = en_fires.sum(0)
    chosen = ((n_en_S >= 1) & (n_en_S <= max(1, int(max_doc_share * P)))).nonzero()[:, 0]
    per_feature = []
    hits = total = 0
    for f in chosen.tolist():
        on = en_fires[:, f]
        n_on, n_off = int(on.sum()), int((~on).sum())
        hit = int((ot_fires[:, f] & on).sum())
        false_pos = int((ot_fires[:, f] & ~on).sum())
        hits, total = hits + hit, total + n_on
        per_feature.append(
            {
                "feature": f,
                "n_english": n_on,
                "recall": hit / n_on,
                "recall_ci": wilson(hit, n_on, unit="articles").model_dump(mode="json"),
                "false_positive_rate": false_pos / n_off if n_off else None,
                "false_positive_rate_ci": wilson(false_pos, n_off, unit="articles").model_dump(mode="json")
                if n_off
                else None,
            }
        )
    recalls = torch.tensor([r["recall"] for r in per_feature])
    fprs = torch.tensor([r["false_positive_rate"] for r in per_feature if r["false_positive_rate"] is not None])
    summary = {
        "n_pairs": P,
        "n_features": len(per_feature),
        "pooled_recall": hits / total if total else None,
        "mean_recall": float(recalls.mean()) if recalls.numel() else None,
        "share_recall_at_least_half": float((recalls >= 0.5).float().mean()) if recalls.numel() else None,
        "mean_false_positive_rate": float(fprs.mean()) if fprs.numel() else None,
    }
    if total:
        on_PF, hit_PF = en_fires[:, chosen], ot_fires[:, chosen] & en_fires[:, chosen]
        summary.update(_recall_intervals(on_PF, hit_PF, summary["pooled_recall"], summary["mean_recall"]))
    if fprs.numel():
        off_PF = ~en_fires[:, chosen]
        summary["mean_false_positive_rate_ci"] = _mean_rate_interval(
            off_PF, ot_fires[:, chosen] & off_PF, summary["mean_false_positive_rate"]
        )
    per_feature.sort(key=lambda r: (-r["n_english"], r["feature"]))
    return {"summary": summary, "features": per_feature}


def _recall_intervals(on_PF: Tensor, hit_PF: Tensor, pooled: float, mean: float) -> dict:
    """95% intervals of the pooled and mean recall, bootstrapped over article pairs (an article's
    features fire together, so the pairs, not the (feature, article) cells, are the units)."""
    on, hit = on_PF.double().numpy(), hit_PF.double().numpy()

    P = on.shape[0]
    return {
        "pooled_recall_ci": group_bootstrap(
            ratio_of_sums(hit.sum(1), on.sum(1)), P, unit="article pairs", value=pooled
        ).model_dump(mode="json"),
        "mean_recall_ci": group_bootstrap(_mean_of_rates(on, hit), P, unit="article pairs", value=mean).model_dump(
            mode="json"
        ),
    }


def _mean_rate_interval(off_PF: Tensor, false_pos_PF: Tensor, mean: float) -> dict:
    """95% interval of the mean false-positive rate, over article pairs like the recall's."""
    off, false_pos = off_PF.double().numpy(), false_pos_PF.double().numpy()
    return group_bootstrap(_mean_of_rates(off, false_pos), off.shape[0], unit="article pairs", value=mean).model_dump(
        mode="json"
    )


def _mean_of_rates(trials_PF: np.ndarray, events_PF: np.ndarray):
    """The statistic: mean over features of events / trials under each weighting of the pairs."""

    def mean_rate(W_RG: np.ndarray) -> np.ndarray:
        rate_RF = (W_RG @ events_PF) / (W_RG @ trials_PF)  # NaN: a feature none of whose trials was drawn
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(rate_RF, axis=1)

    return mean_rate
