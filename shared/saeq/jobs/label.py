"""Label an SAE's features: pick them from the feature index, show each explainer the top windows,
then score every label on windows the explainer never saw (saeq.ml.scoring). The work goes in
chunks of CHUNK_FEATURES features; a chunk finished by an earlier attempt is taken as it was."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from saeq.errors import Cancelled, InvalidSpec
from saeq.jobs.label_bins import activating_contexts, select_density_bins
from saeq.ml.explainers import PROMPT_VERSION, Decode, Evidence, Explainer, Judge
from saeq.ml.features import Example, FeatureIndex
from saeq.ml.scoring import EmbeddingScorer, detection_items, fuzzing_items, judge_scores
from saeq.specs import LabelSpec

QUANTILE_BINS = 5
FEATURES_PER_ROUND = 8  # features whose prompts are batched together
CHUNK_FEATURES = 32  # features per kept chunk: 4 rounds, so an interruption loses at most that


@dataclass(frozen=True)
class LabelChunk:
    """Chunk `index` of the features to label: features[index * CHUNK_FEATURES:][:CHUNK_FEATURES],
    and their records (one per feature and explainer, in labels.jsonl's order)."""

    index: int
    features: list[int]
    records: list[dict]


@dataclass(frozen=True)
class FeatureSample:
    """One feature's windows: `top` for the explainers, `activating` and `silent` for scoring."""

    feature: int
    top: list[Example]
    activating: list[Example]
    silent: list[Example]


def select_features(index: FeatureIndex, spec: LabelSpec) -> list[int]:
    """The features to label: the spec's list, those `select` draws across density bins, or the
    most active ones, each with at least `min_activating` activating contexts."""
    if spec.features is not None:
        bad = [f for f in spec.features if f >= index.d_sae]
        if bad:
            raise InvalidSpec(f"features {bad[:5]} are not in 0..{index.d_sae - 1}", field="spec.features")
        return list(dict.fromkeys(spec.features))
    if spec.select is not None:
        return select_density_bins(index, spec.select, spec.min_activating)
    n_contexts = activating_contexts(index)
    density = index.density()
    ranked = [f for f in density.argsort(descending=True).tolist() if n_contexts[f] >= spec.min_activating]
    return ranked[: spec.n_most_active] if spec.n_most_active else ranked


def sample_feature(index: FeatureIndex, feature: int, spec: LabelSpec) -> FeatureSample:
    """Top windows, then scoring windows from the other activating contexts spread over
    activation quantiles, and as many silent windows; seeded per feature."""
    g = torch.Generator().manual_seed((spec.seed * 1_000_003 + feature) % (1 << 63))
    w = {"before": spec.window_before, "after": spec.window_after}
    top = index.top_examples(feature, spec.n_explain_examples, **w)
    per_bin = math.ceil(spec.n_score_examples / QUANTILE_BINS)
    bins = index.quantile_examples(feature, per_bin, QUANTILE_BINS, exclude={e.context for e in top}, generator=g, **w)
    activating = _round_robin(bins)[: spec.n_score_examples]
    silent = index.silent_examples(
        feature, len(activating), length=spec.window_before + spec.window_after + 1, generator=g
    )
    return FeatureSample(feature, top, activating, silent)


def _round_robin(bins: list[list[Example]]) -> list[Example]:
    """Interleave bins so a cut keeps every quantile represented."""
    out = []
    for i in range(max((len(b) for b in bins), default=0)):
        out += [b[i] for b in bins if i < len(b)]
    return out


def label_features(
    index: FeatureIndex,
    features: list[int],
    spec: LabelSpec,
    *,
    explainers: list[Explainer],
    judge: Judge | None,
    embedder: EmbeddingScorer | None,
    decode: Decode,
    finished: Mapping[int, LabelChunk] | None = None,
    on_chunk: Callable[[LabelChunk], None] = lambda chunk: None,
    should_stop: Callable[[], bool] = lambda: False,
    on_progress: Callable[[int, int], None] = lambda done, total: None,
) -> list[dict]:
    """One record per (feature, explainer): label, description, scores; the labels.jsonl rows.
    `finished`: chunks an earlier attempt completed, by index; one is used as it is only when it
    covers the same features (else it is redone). `on_chunk` sees each chunk labelled here."""
    finished = finished or {}
    per_feature = index.density(), index.max_act()
    records: list[dict] = []
    for c0 in range(0, len(features), CHUNK_FEATURES):
        chunk_features = features[c0 : c0 + CHUNK_FEATURES]
        kept = finished.get(c0 // CHUNK_FEATURES)
        if kept is not None and kept.features == chunk_features:
            records += kept.records
            on_progress(c0 + len(chunk_features), len(features))
            continue
        if should_stop():
            raise Cancelled("labelling cancelled")
        chunk = LabelChunk(c0 // CHUNK_FEATURES, chunk_features, [])
        for r0 in range(0, len(chunk_features), FEATURES_PER_ROUND):
            if should_stop():
                raise Cancelled("labelling cancelled")
            round_features = chunk_features[r0 : r0 + FEATURES_PER_ROUND]
            chunk.records.extend(
                _label_round(index, per_feature, round_features, spec, explainers, judge, embedder, decode)
            )
            on_progress(c0 + r0 + len(round_features), len(features))
        records += chunk.records
        on_chunk(chunk)
    return records


def _label_round(index, per_feature, features, spec, explainers, judge, embedder, decode) -> list[dict]:
    """The records of one round: `features`' prompts batched, for each explainer in turn;
    `per_feature`: the index's (density, max_act), computed once per job."""
    density, max_act = per_feature
    samples = [sample_feature(index, f, spec) for f in features]
    evidence = [Evidence(s.feature, s.top) for s in samples]
    records: list[dict] = []
    for explainer in explainers:
        explanations = explainer.explain(evidence)
        scores = _score(samples, explanations, spec, judge, embedder, decode)
        for s, e, sc in zip(samples, explanations, scores, strict=False):
            records.append(
                {
                    "feature": s.feature,
                    "explainer": explainer.name,
                    "label": e.label,
                    "description": e.description,
                    "scores": sc,
                    "prompt_version": PROMPT_VERSION,
                    "judge": judge.name if judge else None,
                    "density": float(density[s.feature]),
                    "max_activation": float(max_act[s.feature]),
                    "n_top": len(s.top),
                    "n_activating_scored": len(s.activating),
                    "n_silent_scored": len(s.silent),
                }
            )
    return records


def _score(samples, explanations, spec, judge, embedder, decode) -> list[dict]:
    out: list[dict] = [{} for _ in samples]
    scorable = [i for i, s in enumerate(samples) if s.activating and s.silent]
    for kind in spec.scorers:
        if kind == "embedding":
            for i in scorable:
                s = samples[i]
                out[i]["embedding"] = embedder.score(explanations[i], s.activating, s.silent, decode).to_dict()
            continue
        batch = [
            detection_items(explanations[i], samples[i].activating, samples[i].silent, decode)
            if kind == "detection"
            else fuzzing_items(
                explanations[i],
                samples[i].activating,
                decode,
                torch.Generator().manual_seed((spec.seed * 1_000_003 + samples[i].feature + 1) % (1 << 63)),
            )
            for i in scorable
        ]
        for i, sc in zip(scorable, judge_scores(judge, kind, batch), strict=False):
            out[i][kind] = sc.to_dict()
    return out
