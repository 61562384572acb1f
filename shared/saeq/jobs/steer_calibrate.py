"""Calibrated steering strength: per feature, sweep multiples of its max activation on "fit" prompts,
keep the smallest strength whose completions move to the concept (MiniLM similarity to the label,
steered minus default) within a side-effect budget (KL from default, perplexity under the unsteered
model), then score that choice on held-out prompts against a fixed clamp to 2x the max activation,
each figure with a 95% bootstrap interval over the held-out prompts.

The sweep goes smallest first and stops at the first strength that works, or at the first one over
budget: KL and perplexity grow with the strength, so a larger one would be over budget too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from saeq.jobs.steer import Completion, FeatureEdit, SteerSites, generate, side_effects
from saeq.ml.intervals import bootstrap_mean, paired_difference, ratio_of_sums
from saeq.ml.models import LoadedModel
from saeq.ml.sae import SparseAutoencoder
from saeq.specs.estimates import Estimate
from saeq.specs.steer_calibrate import SteerCalibrate

Similarity = Callable[[str, list[str]], list[float]]
"""(concept, texts) -> each text's similarity to the concept (MiniLM cosine)."""
Judge = Callable[[str, list[str], list[str]], list[float]]
"""(concept, prompts, completions) -> each completion's steering score, 0..2 (AxBench's harmonic mean)."""


@dataclass(frozen=True)
class Target:
    feature: int
    concept: str
    """The feature's label: what steering it should bring in."""
    max_activation: float
    """On the label job's index: the unit of the strengths swept."""


@dataclass(frozen=True)
class Prompt:
    text: str
    ids: list[int]


@dataclass(frozen=True)
class SweepPoint:
    multiple: float
    value: float
    concept_gain: float
    """Mean over the fit prompts of similarity(steered) - similarity(default)."""
    kl_from_default: float
    perplexity_unsteered: float
    within_budget: bool
    meets_concept: bool


@dataclass(frozen=True)
class Arm:
    """One strength on the held-out prompts."""

    mode: str
    value: float
    concept_gain: Estimate
    kl_from_default: Estimate
    perplexity_unsteered: Estimate
    steering_score: Estimate | None
    """With a judge: the mean score over held-out prompts."""
    concept_gains: list[float] = field(default_factory=list)
    """Per held-out prompt (in `held_out_prompts` order), for pooling over features."""
    scores: list[float] | None = None
    """Per held-out prompt, with a judge."""


@dataclass
class FeatureCalibration:
    feature: int
    concept: str
    max_activation: float
    mode: str
    value: float
    """The calibrated strength (the edit's value in `mode`)."""
    multiple: float
    met: bool
    """False: no strength reached the concept within budget; `value` is then the within-budget
    strength with the largest concept gain (or the smallest tried, if none was within budget)."""
    sweep: list[SweepPoint]
    fit_prompts: list[int]
    held_out_prompts: list[int]
    calibrated: Arm
    baseline: Arm
    """The fixed clamp to baseline_multiple x max activation."""
    calibrated_minus_baseline: dict[str, Estimate] = field(default_factory=dict)
    """Paired over the held-out prompts: concept_gain, and steering_score with a judge."""

    def to_dict(self) -> dict:
        return asdict(self) | {
            "calibrated": _arm_dict(self.calibrated),
            "baseline": _arm_dict(self.baseline),
            "calibrated_minus_baseline": {
                k: v.model_dump(mode="json") for k, v in self.calibrated_minus_baseline.items()
            },
        }


def _arm_dict(arm: Arm) -> dict:
    return {k: (v.model_dump(mode="json") if isinstance(v, Estimate) else v) for k, v in vars(arm).items()}


def split_prompts(n: int, held_out: float, seed: int) -> tuple[list[int], list[int]]:
    """Fit and held-out prompt indices, disjoint, at least 2 each, drawn by `seed`."""
    order = np.random.default_rng(seed).permutation(n).tolist()
    n_held = min(max(2, round(held_out * n)), n - 2)
    return sorted(order[n_held:]), sorted(order[:n_held])


@dataclass
class _Run:
    """The completions of one strength on some prompts, and what they did."""

    texts: list[str]
    kl: list[float]
    perplexity: list[float]


def calibrate(
    lm: LoadedModel,
    sae: SparseAutoencoder,
    hook: str,
    targets: Sequence[Target],
    prompts: Sequence[Prompt],
    spec: SteerCalibrate,
    *,
    max_new_tokens: int,
    similarity: Similarity,
    judge: Judge | None = None,
    seed: int = 0,
    temperature: float = 0.0,
    sites: SteerSites | None = None,
    check: Callable[[], None] = lambda: None,
    on_feature: Callable[[int, int], None] = lambda done, total: None,
) -> list[FeatureCalibration]:
    """Each target calibrated on the same split of `prompts` (by `seed`)."""
    fit, held = split_prompts(len(prompts), spec.held_out, seed)
    gen = dict(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, check=check)
    defaults = [generate(lm, p.ids, **gen) for p in prompts]  # pyright: ignore[reportArgumentType]

    def run(edits: list[FeatureEdit], on: list[int]) -> _Run:
        out = _Run([], [], [])
        for i in on:
            check()
            c: Completion = generate(lm, prompts[i].ids, hook=hook, sae=sae, edits=edits, sites=sites, **gen)  # pyright: ignore[reportArgumentType]
            fx = side_effects(lm, prompts[i].ids, c, hook=hook, sae=sae, edits=edits, sites=sites)
            out.texts.append(c.text)
            out.kl.append(fx.kl_from_default)
            out.perplexity.append(fx.perplexity_unsteered)
        return out

    def gains(concept: str, texts: list[str], on: list[int]) -> list[float]:
        sims = similarity(concept, [defaults[i].text for i in on] + texts)
        return [s - d for d, s in zip(sims[: len(on)], sims[len(on) :], strict=True)]

    results = []
    for t_i, t in enumerate(targets):
        sweep: list[SweepPoint] = []
        for m in spec.multiples:
            value = m * t.max_activation
            r = run([FeatureEdit(t.feature, spec.mode, value)], fit)
            gain = float(np.mean(gains(t.concept, r.texts, fit)))
            kl, ppl = float(np.mean(r.kl)), _finite_mean(r.perplexity)
            within = (spec.max_kl is None or kl <= spec.max_kl) and (
                spec.max_perplexity is None or ppl <= spec.max_perplexity
            )
            point = SweepPoint(m, value, gain, kl, ppl, within, gain >= spec.concept_gain)
            sweep.append(point)
            if not point.within_budget or point.meets_concept:
                break
        chosen, met = _choose(sweep)
        calibrated_edit = FeatureEdit(t.feature, spec.mode, chosen.value)
        baseline_edit = FeatureEdit(t.feature, "clamp", spec.baseline_multiple * t.max_activation)
        arms, score_lists, gain_lists = [], [], []
        for edit in (calibrated_edit, baseline_edit):
            r = run([edit], held)
            g = gains(t.concept, r.texts, held)
            scores = judge(t.concept, [prompts[i].text for i in held], r.texts) if judge else None
            gain_lists.append(g)
            score_lists.append(scores)
            arms.append(
                Arm(
                    edit.mode,
                    edit.value,
                    _mean(g),
                    _mean(r.kl),
                    _mean(r.perplexity),
                    _mean(scores) if scores else None,
                    g,
                    scores,
                )
            )
        diffs = {"concept_gain": _paired(gain_lists[0], gain_lists[1])}
        if score_lists[0] is not None and score_lists[1] is not None:
            diffs["steering_score"] = _paired(score_lists[0], score_lists[1])
        results.append(
            FeatureCalibration(
                t.feature, t.concept, t.max_activation, spec.mode, chosen.value, chosen.multiple, met, sweep,
                fit, held, arms[0], arms[1], diffs,
            )
        )  # fmt: skip
        on_feature(t_i + 1, len(targets))
    return results


def _finite_mean(values: Sequence[float]) -> float:
    """Mean over the finite values (an empty completion has no perplexity); inf when none is."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if len(v) else float("inf")


def _choose(sweep: list[SweepPoint]) -> tuple[SweepPoint, bool]:
    """The smallest that works; else the best concept gain within budget; else the smallest tried."""
    for p in sweep:
        if p.within_budget and p.meets_concept:
            return p, True
    within = [p for p in sweep if p.within_budget]
    return (max(within, key=lambda p: p.concept_gain) if within else sweep[0]), False


def _mean(values: Sequence[float]) -> Estimate:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]  # an empty completion has no perplexity
    return bootstrap_mean(v, np.ones_like(v), unit="prompts")


def _paired(a: Sequence[float], b: Sequence[float]) -> Estimate:
    a_P, b_P = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ones = np.ones_like(a_P)
    return paired_difference(ratio_of_sums(a_P, ones), ratio_of_sums(b_P, ones), len(a_P), unit="prompts")
