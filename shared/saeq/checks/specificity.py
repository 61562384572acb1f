"""Specificity: does high activation mean the text is about the label? A judge rates contexts
sampled across each feature's activation range, zero included, on Scaling Monosemanticity's 0-3
scale; we report the Spearman correlation of activation and rating and, per activation bin, the
share of contexts rated 2 or 3.

Each rater gives a continuous `score` (an LLM judge's expected rating under its distribution over
0-3; the embedding judge's cosine similarity) and the integer `rating`; Spearman uses the score.
The rater is first put to planted control trials (`rater_control`); one at chance is flagged in the
summary ("judge uncalibrated: scores uninformative").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from scipy.stats import spearmanr

from saeq.checks.specificity_intervals import (
    pooled_share_intervals,
    pooled_spearman_interval,
    share_intervals,
    spearman_interval,
)
from saeq.ml.control_trials import control_result, planted_trials
from saeq.ml.explainers import Decode, Explanation, LocalLLM, one_line, text_of
from saeq.ml.features import Example, FeatureIndex
from saeq.ml.intervals import bootstrap_mean
from saeq.specs.label import JudgeControl

RATING_PROMPT_VERSION = "saeq.specificity-prompts/1"
BIN_EDGES = (0.0, 0.25, 0.5, 0.75, 1.0)
"""Bins of activation / the feature's largest activation; exact zeros form a bin of their own."""
BIN_NAMES = ("0", "(0, .25]", "(.25, .5]", "(.5, .75]", "(.75, 1]")

_RUBRIC = (
    "Rate how well the text matches the concept, from 0 to 3:\n"
    "0 - the text has nothing to do with the concept.\n"
    "1 - the text is only loosely related to the concept.\n"
    "2 - the text is mostly about the concept, or mentions it clearly.\n"
    "3 - the text is clearly and directly about the concept."
)


@dataclass(frozen=True)
class Rating:
    score: float
    rating: int


class Rater(Protocol):
    name: str

    def rate(self, items: list[tuple[Explanation, str]]) -> list[Rating]: ...


def _from_distribution(probs: list[float]) -> Rating:
    total = sum(probs) or 1.0
    p = [v / total for v in probs]
    return Rating(sum(i * v for i, v in enumerate(p)), max(range(4), key=lambda i: p[i]))


class LocalRater:
    """The local model's next-token probabilities of the digits 0-3 after the rubric."""

    def __init__(self, llm: LocalLLM, name: str):
        self.llm, self.name = llm, name

    def rate(self, items: list[tuple[Explanation, str]]) -> list[Rating]:
        prompts = [f'{_RUBRIC}\n\nConcept: {e.label}\nText: "{one_line(t, 400)}"\nRating:' for e, t in items]
        return [_from_distribution(p) for p in self.llm.option_probabilities(prompts, ["0", "1", "2", "3"])]


class EndpointRater:
    """An OpenAI-compatible endpoint: the digits' first-token probabilities when the server gives
    logprobs, else the digit it answers."""

    def __init__(self, endpoint, name: str):
        self.endpoint, self.name = endpoint, name

    def rate(self, items: list[tuple[Explanation, str]]) -> list[Rating]:
        conversations = [
            [
                {"role": "system", "content": f"{_RUBRIC}\nAnswer with one digit."},
                {"role": "user", "content": f"Concept: {e.label} ({e.description})\nText: {one_line(t, 1000)}"},
            ]
            for e, t in items
        ]
        return [
            _from_distribution(p) for p in self.endpoint.option_probability_batch(conversations, ["0", "1", "2", "3"])
        ]


class EmbeddingRater:
    """Cosine similarity (MiniLM) of "label: description" and the text; rating = how many of
    THRESHOLDS it reaches."""

    THRESHOLDS = (0.15, 0.3, 0.45)

    def __init__(self, scorer, name: str = "embedding"):
        self.scorer, self.name = scorer, name

    def rate(self, items: list[tuple[Explanation, str]]) -> list[Rating]:
        out = []
        by_label: dict[Explanation, list[int]] = {}
        for i, (e, _) in enumerate(items):
            by_label.setdefault(e, []).append(i)
        sims = [0.0] * len(items)
        for e, rows in by_label.items():
            for i, s in zip(
                rows, self.scorer.similarity(f"{e.label}: {e.description}", [items[i][1] for i in rows]), strict=False
            ):
                sims[i] = s
        for s in sims:
            out.append(Rating(float(s), sum(s >= t for t in self.THRESHOLDS)))
        return out


def specificity_examples(
    index: FeatureIndex,
    feature: int,
    *,
    n_zero: int,
    n_bins: int,
    n_per_bin: int,
    before: int,
    after: int,
    generator: torch.Generator,
) -> list[Example]:
    """Windows from activation quantiles of the contexts where the feature fires, and silent ones."""
    bins = index.quantile_examples(
        feature, n_per_bin, n_bins, before=before, after=after, exclude=set(), generator=generator
    )
    silent = index.silent_examples(feature, n_zero, length=before + after + 1, generator=generator)
    return [ex for b in bins for ex in b] + silent


def activation_bin(fraction: float) -> int:
    """Index into BIN_NAMES of activation / max activation."""
    if fraction <= 0:
        return 0
    return 1 + min(sum(fraction > e for e in BIN_EDGES[1:-1]), len(BIN_EDGES) - 2)


def specificity(
    index: FeatureIndex,
    labels: dict[int, Explanation],
    rater: Rater,
    decode: Decode,
    *,
    n_zero: int,
    n_bins: int,
    n_per_bin: int,
    before: int,
    after: int,
    seed: int,
) -> dict:
    """Per feature: the rated contexts, Spearman(activation, score) and the share rated 2-3 per
    activation bin; and the same pooled over features (activation divided by each feature's max)."""
    max_act = index.max_act()
    samples = {}
    for f in labels:
        g = torch.Generator().manual_seed((seed * 1_000_003 + f) % (1 << 63))
        samples[f] = specificity_examples(
            index, f, n_zero=n_zero, n_bins=n_bins, n_per_bin=n_per_bin, before=before, after=after, generator=g
        )
    items = [(labels[f], text_of(ex, decode)) for f, exs in samples.items() for ex in exs]
    ratings = iter(rater.rate(items))
    features, pooled = [], []
    for f, exs in samples.items():
        rows = []
        for ex in exs:
            r = next(ratings)
            fraction = ex.max_act / float(max_act[f]) if max_act[f] > 0 else 0.0
            rows.append(
                {
                    "activation": ex.max_act,
                    "fraction_of_max": fraction,
                    "score": r.score,
                    "rating": r.rating,
                    "context": ex.context,
                    "start": ex.start,
                }
            )
        pooled += rows
        acts, scores = [r["activation"] for r in rows], [r["score"] for r in rows]
        rho = _spearman(acts, scores)
        features.append(
            {
                "feature": f,
                "label": labels[f].label,
                "max_activation": float(max_act[f]),
                "spearman": rho,
                "spearman_ci": spearman_interval(acts, scores, rho, seed=seed),
                "high_rated_share_by_bin": _bin_shares(rows),
                "high_rated_share_by_bin_ci": share_intervals(_rating_counts(rows)),
                "contexts": rows,
            }
        )
    rhos = [x["spearman"] for x in features if x["spearman"] is not None]
    mean_rho = sum(rhos) / len(rhos) if rhos else None
    summary = {
        "n_features": len(features),
        "n_contexts": len(pooled),
        "mean_spearman": mean_rho,
        # features are the units: each is rated on contexts of its own
        "mean_spearman_ci": None
        if mean_rho is None
        else bootstrap_mean(rhos, [1.0] * len(rhos), unit="features", value=mean_rho).model_dump(mode="json"),
        "median_spearman": float(torch.tensor(rhos).median()) if rhos else None,
        "pooled_spearman": (
            pooled_rho := _spearman([r["fraction_of_max"] for r in pooled], [r["score"] for r in pooled])
        ),
        "pooled_spearman_ci": pooled_spearman_interval(
            [[(r["fraction_of_max"], r["score"]) for r in x["contexts"]] for x in features], pooled_rho, seed=seed
        ),
        "high_rated_share_by_bin": _bin_shares(pooled),
        "high_rated_share_by_bin_ci": pooled_share_intervals([_rating_counts(x["contexts"]) for x in features])
        if features
        else [None] * len(BIN_NAMES),
        "rating_counts_by_bin": _rating_counts(pooled),
    }
    # Before the correlations are read as the labels': can this rater tell where the answer is known?
    control = rater_control(index, rater, decode, before=before, after=after, seed=seed)
    summary["rater_control"] = control.model_dump(mode="json")
    summary["flag"] = control.flag
    return {
        "summary": summary,
        "features": features,
        "bins": list(BIN_NAMES),
        "rater": rater.name,
        "prompt_version": RATING_PROMPT_VERSION,
    }


def rater_control(
    index: FeatureIndex, rater: Rater, decode: Decode, *, before: int, after: int, seed: int
) -> JudgeControl:
    """The rater on planted trials (saeq.ml.control_trials): right on a trial when it scores
    `the word "X"` higher on the window around X than on a window without it."""
    trials = planted_trials(index, decode, before=before, after=after, seed=seed)
    items = [(t.label, text_of(ex, decode)) for t in trials for ex in (t.fits, t.misfits)]
    scores = [r.score for r in rater.rate(items)] if items else []
    right = [scores[2 * i] > scores[2 * i + 1] for i in range(len(trials))]
    return control_result("specificity", rater.name, ["planted"] * len(trials), right)


def _spearman(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None  # undefined when either side is constant
    rho = spearmanr(x, y).statistic  # pyright: ignore[reportAttributeAccessIssue]  scipy's stubs: a bare tuple
    return None if math.isnan(rho) else float(rho)


def _bin_shares(rows: list[dict]) -> list[float | None]:
    counts = _rating_counts(rows)
    return [None if sum(c) == 0 else (c[2] + c[3]) / sum(c) for c in counts]


def _rating_counts(rows: list[dict]) -> list[list[int]]:
    """[bin][rating] number of contexts."""
    counts = [[0] * 4 for _ in BIN_NAMES]
    for r in rows:
        counts[activation_bin(r["fraction_of_max"])][r["rating"]] += 1
    return counts
