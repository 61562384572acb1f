"""Control trials with known answers, shared by the label job's judges (saeq.jobs.label_controls)
and the specificity rater (saeq.checks.specificity): a planted label, `the word "X"`, against
windows around X and windows without it, and the verdict on a scorer's answers: Wilson's 95%
interval against chance (saeq.ml.intervals)."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import torch

from saeq.ml.explainers import Decode, Explanation, text_of
from saeq.ml.features import Example, FeatureIndex
from saeq.ml.intervals import wilson
from saeq.specs.label import JUDGE_UNCALIBRATED, JudgeControl

CHANCE = 0.5
PLANTED_WORDS = 4
PLANTED_WINDOWS = 8
"""Trials per planted word."""
PLANTED_CANDIDATES = 64
"""Planted words are drawn from this many of the most widespread whole-word tokens."""
PLANTED_MIN_CONTEXTS = 4


@dataclass(frozen=True)
class Trial:
    kind: str
    """"own_vs_other" or "planted"."""
    label: Explanation
    fits: Example
    misfits: Example
    """For a planted trial, the fuzzing question marks `fits` itself elsewhere instead."""


def planted_label(word: str) -> Explanation:
    return Explanation(f'the word "{word}"', f'Text that contains the word "{word}".')


def planted_trials(index: FeatureIndex, decode: Decode, *, before: int, after: int, seed: int) -> list[Trial]:
    """PLANTED_WORDS words (whole-word tokens of 4+ letters found in many, but at most half, of the
    indexed contexts), each with PLANTED_WINDOWS windows around it and as many windows without it."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + 7)
    ids_CT, sinks_CT = index.token_ids_CT, index.sinks_CT
    C, T = ids_CT.shape
    length = min(before + after + 1, T - 1)
    in_contexts: Counter[int] = Counter(t for c in range(C) for t in set(ids_CT[c].tolist()))
    candidates = []
    for token, n in in_contexts.most_common():
        word = decode([token])[0].strip()
        if PLANTED_MIN_CONTEXTS <= n <= C // 2 and len(word) >= 4 and word.isalpha() and word.isascii():
            candidates.append((token, word))
        if len(candidates) == PLANTED_CANDIDATES:
            break
    chosen = [candidates[i] for i in sorted(torch.randperm(len(candidates), generator=g)[:PLANTED_WORDS].tolist())]
    trials: list[Trial] = []
    for token, word in chosen:
        label, pattern = planted_label(word), re.compile(rf"\b{re.escape(word)}\b", re.I)
        where = ((ids_CT == token) & ~sinks_CT).nonzero().tolist()  # (context, position), in order
        first: dict[int, int] = {}
        for c, t in where:
            first.setdefault(c, t)
        with_word = list(first)
        fits = []
        for k in torch.randperm(len(with_word), generator=g)[:PLANTED_WINDOWS].tolist():
            c = with_word[k]
            start = max(0, min(first[c] - before, T - length))
            window = ids_CT[c, start : start + length].tolist()
            fits.append(Example(c, start, window, [float(t == token) for t in window], int(index.doc_ids_CT[c, start])))
        misfits = []
        without = sorted(set(range(C)) - set(with_word))
        for k in torch.randperm(len(without), generator=g).tolist():
            c = without[k]
            start = 1 + int(torch.randint(T - length, (1,), generator=g))
            window = ids_CT[c, start : start + length].tolist()
            example = Example(c, start, window, [0.0] * len(window), int(index.doc_ids_CT[c, start]))
            if not pattern.search(text_of(example, decode)):  # "X" may come as another token ("X" vs " X")
                misfits.append(example)
            if len(misfits) == len(fits):
                break
        trials += [Trial("planted", label, a, b) for a, b in zip(fits, misfits, strict=False)]
    return trials


def control_result(scorer: str, judge: str, kinds: list[str], right: list[bool]) -> JudgeControl:
    """The accuracy of `right` (one per answer, of the trial kind `kinds` names), Wilson's 95%
    interval, and the verdict: calibrated only when the interval lies wholly above chance."""
    accuracy = wilson(sum(right), len(right), unit="trials")
    by_kind = {
        k: wilson(sum(r for r, kk in zip(right, kinds, strict=True) if kk == k), kinds.count(k), unit="trials")
        for k in dict.fromkeys(kinds)
    }
    calibrated = len(right) > 0 and accuracy.low > CHANCE
    if calibrated:
        flag = None
    elif not right:
        flag = f"{JUDGE_UNCALIBRATED} (no control trial could be built)"
    else:
        flag = f"{JUDGE_UNCALIBRATED} (control accuracy {accuracy.text('{:.3f}')} is not above chance {CHANCE})"
    return JudgeControl.model_validate(
        {
            "scorer": scorer,
            "judge": judge,
            "accuracy": accuracy,
            "by_kind": by_kind,
            "chance": CHANCE,
            "calibrated": calibrated,
            "flag": flag,
        }
    )
