"""Control trials that test a label job's judges before their scores count. Each trial pairs a
label with a window it fits and a window it does not, so the right answer is known:

- own_vs_other: a feature's own label against one of its scoring windows (fits) and against a
  window of another feature, with a different label, in which the first is silent;
- planted: the label `the word "X"` against windows around an occurrence of X (fits) and windows
  without it; for fuzzing, the same window with X marked (fits) and with as many other tokens marked.

A detection or fuzzing judge answers each side as a yes/no question (right when P(yes) > 0.5 on the
fitting side and < 0.5 on the other), so a judge that always answers the same gets exactly chance,
0.5; the embedding scorer is right on a trial when the label is nearer the fitting window. The
accuracy gets Wilson's 95% interval (saeq.ml.control_trials, which builds the planted trials) over the answers; a scorer whose interval reaches chance is
flagged uncalibrated and its scores are left out of the summary means.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from saeq.jobs.label import FeatureSample, sample_feature
from saeq.ml.control_trials import Trial, control_result, planted_trials
from saeq.ml.explainers import Decode, Explanation, Judge, text_of
from saeq.ml.features import Example, FeatureIndex
from saeq.ml.scoring import EmbeddingScorer, fuzzing_items
from saeq.specs.label import JudgeControl, LabelSpec

OWN_WINDOWS = 2
"""Own-label trials per feature and explainer."""
CONTROL_FEATURES = 64
"""Own-label trials use at most this many of the labelled features (evenly spread over them)."""


def own_vs_other_trials(samples: Sequence[FeatureSample], records: list[dict], index: FeatureIndex) -> list[Trial]:
    """For each explainer's label of each sampled feature: OWN_WINDOWS trials, the feature's own
    scoring windows against windows of the next features (in order) whose label differs and in
    which the feature never fires."""
    T = index.token_ids_CT.shape[1]
    by_feature = {s.feature: s for s in samples}
    order = [s.feature for s in samples]
    trials: list[Trial] = []
    for explainer in dict.fromkeys(r["explainer"] for r in records):
        labels = {
            r["feature"]: Explanation(r["label"], r["description"]) for r in records if r["explainer"] == explainer
        }
        for i, f in enumerate(order):
            own, fits = labels.get(f), by_feature[f].activating[:OWN_WINDOWS]
            if own is None or not fits:
                continue
            # a dense feature fires in nearly every context, so silence is asked of the window only
            fires_at = set(index.activations(f)[0].tolist())
            misfits: list[Example] = []
            for g in order[i + 1 :] + order[:i]:
                other = labels.get(g)
                if other is None or other.label.strip().lower() == own.label.strip().lower():
                    continue
                misfits += [ex for ex in by_feature[g].activating if not _fires_in(ex, fires_at, T)]
                if len(misfits) >= len(fits):
                    break
            trials += [Trial("own_vs_other", own, a, b) for a, b in zip(fits, misfits, strict=False)]
    return trials


def _fires_in(window: Example, fires_at: set[int], T: int) -> bool:
    first = window.context * T + window.start
    return any(p in fires_at for p in range(first, first + len(window.token_ids)))


def run_controls(
    index: FeatureIndex,
    features: list[int],
    records: list[dict],
    spec: LabelSpec,
    *,
    judge: Judge | None,
    embedder: EmbeddingScorer | None,
    decode: Decode,
) -> list[JudgeControl]:
    """The label job's controls: trials from its own labels and planted words, put to each scorer."""
    n = len(features)
    picked = (
        features if n <= CONTROL_FEATURES else [features[i * n // CONTROL_FEATURES] for i in range(CONTROL_FEATURES)]
    )
    samples, chosen = [sample_feature(index, f, spec) for f in picked], set(picked)
    trials = own_vs_other_trials(samples, [r for r in records if r["feature"] in chosen], index)
    trials += planted_trials(index, decode, before=spec.window_before, after=spec.window_after, seed=spec.seed)
    return judge_controls(trials, spec.scorers, judge=judge, embedder=embedder, decode=decode, seed=spec.seed)


def judge_controls(
    trials: list[Trial],
    scorers: Sequence[str],
    *,
    judge: Judge | None,
    embedder: EmbeddingScorer | None,
    decode: Decode,
    seed: int = 0,
) -> list[JudgeControl]:
    """One JudgeControl per scorer of `scorers` that has its judge (or embedder)."""
    out = []
    for scorer in scorers:
        if scorer == "embedding" and embedder is not None:
            right = _embedding_answers(trials, embedder, decode)
            out.append(control_result("embedding", embedder.name, [t.kind for t in trials], right))
        elif scorer == "detection" and judge is not None:
            items = [(t.label, text_of(ex, decode)) for t in trials for ex in (t.fits, t.misfits)]
            right = _yes_no_answers(judge.detect(items))
            out.append(control_result("detection", judge.name, [t.kind for t in trials for _ in "yn"], right))
        elif scorer == "fuzzing" and judge is not None:
            planted = [t for t in trials if t.kind == "planted"]
            g = torch.Generator().manual_seed(seed * 1_000_003 + 11)
            # fuzzing_items marks the true tokens of even windows and decoys on odd ones: (fits, fits)
            items = [item for t in planted for item in fuzzing_items(t.label, [t.fits, t.fits], decode, g)[0]]
            right = _yes_no_answers(judge.fuzz(items) if items else [])
            out.append(control_result("fuzzing", judge.name, ["planted"] * len(right), right))
    return out


def _yes_no_answers(p_yes: list[float]) -> list[bool]:
    """Items come in (fits, misfits) pairs: right when yes on the first and no on the second."""
    return [(p > 0.5) == (i % 2 == 0) for i, p in enumerate(p_yes)]


def _embedding_answers(trials: list[Trial], embedder: EmbeddingScorer, decode: Decode) -> list[bool]:
    """One embedding batch per label (all its trials' windows), in trial order."""
    by_label: dict[Explanation, list[int]] = {}
    for i, t in enumerate(trials):
        by_label.setdefault(t.label, []).append(i)
    right = [False] * len(trials)
    for label, members in by_label.items():
        texts = [text_of(ex, decode) for i in members for ex in (trials[i].fits, trials[i].misfits)]
        sims = embedder.similarity(f"{label.label}: {label.description}", texts)
        for j, i in enumerate(members):
            right[i] = sims[2 * j] > sims[2 * j + 1]
    return right
