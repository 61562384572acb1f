"""A steering score in AxBench's spirit (Wu et al. 2025): a judge rates each completion 0-2 on the
concept, on following the instruction and on fluency; a completion's score is the harmonic mean of
the three (0 when any is 0), a set's score the mean over its prompts with a 95% bootstrap interval
over the prompts.

AxBench's judge answers one discrete rating; saeq's judges give the probability of each digit (a
local model from its next-token distribution, an OpenAI-protocol endpoint from its top logprobs, or
all on the digit it answered when it gives none), and a rating is their expectation (0..2), so a
weak judge's uncertainty shows as a middling rating instead of a coin flip.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.stats import hmean

from saeq.ml.intervals import bootstrap_mean
from saeq.specs.estimates import Estimate

RATINGS = ("0", "1", "2")
RUBRICS = {
    "concept": "Rate how clearly the text is about the concept: 0 not at all, 1 somewhat, 2 clearly.",
    "instruction": "Rate how well the text answers the instruction: 0 unrelated, 1 partly, 2 fully.",
    "fluency": "Rate how fluent the text is: 0 broken or repetitive, 1 somewhat fluent, 2 fluent.",
}
"""The three aspects AxBench rates, one rubric each, answered with one digit."""
_RATER_SYSTEM = "You rate a text on one aspect. Answer with one digit: 0, 1 or 2."


class OptionRater(Protocol):
    def option_probabilities(self, prompts: list[str], options: list[str]) -> list[list[float]]:
        """For each prompt, P(each option) as the one-word answer, summing to 1."""
        ...


class EndpointRater:
    """An OpenAI-protocol chat endpoint (saeq.ml.llm.ChatEndpoint) as an OptionRater: each rubric
    prompt is the user message under a system line asking for one digit."""

    def __init__(self, endpoint):
        self.endpoint = endpoint

    def option_probabilities(self, prompts: list[str], options: list[str]) -> list[list[float]]:
        conversations = [
            [{"role": "system", "content": _RATER_SYSTEM}, {"role": "user", "content": p}] for p in prompts
        ]
        return self.endpoint.option_probability_batch(conversations, options)


@dataclass(frozen=True)
class SteerRating:
    concept: float
    instruction: float
    fluency: float
    """Each the judge's expected rating, 0..2."""
    score: float
    """Harmonic mean of the three (0 when any is 0), 0..2."""


@dataclass(frozen=True)
class RatedText:
    concept: str
    """What the steering should bring in: the edited features' labels."""
    instruction: str
    """The prompt the completion answers."""
    text: str
    """The completion."""


def harmonic_score(concept: float, instruction: float, fluency: float) -> float:
    """AxBench's combination: one poor aspect pulls the score down; any 0 makes it 0."""
    values = [concept, instruction, fluency]
    return 0.0 if min(values) <= 0 else float(hmean(values))


def _clip(text: str, chars: int) -> str:
    one = " ".join(text.split())
    return one if len(one) <= chars else one[: chars - 3] + "..."


def _prompt(aspect: str, item: RatedText) -> str:
    lines = [RUBRICS[aspect], ""]
    if aspect == "concept":
        lines.append(f"Concept: {_clip(item.concept, 200)}")
    if aspect == "instruction":
        lines.append(f'Instruction: "{_clip(item.instruction, 400)}"')
    lines += [f'Text: "{_clip(item.text, 600)}"', "Rating:"]
    return "\n".join(lines)


def rate_completions(judge: OptionRater, items: Sequence[RatedText]) -> list[SteerRating]:
    """Each item rated on the three aspects by the judge's digit probabilities."""
    if not items:
        return []
    expected: dict[str, list[float]] = {}
    for aspect in RUBRICS:
        probs = judge.option_probabilities([_prompt(aspect, it) for it in items], list(RATINGS))
        expected[aspect] = [float(np.dot(p, range(len(RATINGS)))) for p in probs]
    return [
        SteerRating(c, i, f, harmonic_score(c, i, f))
        for c, i, f in zip(expected["concept"], expected["instruction"], expected["fluency"], strict=True)
    ]


def steering_score(scores: Sequence[float], **kw) -> Estimate:
    """The mean score over prompts (one completion each) with a bootstrap interval over the prompts."""
    scores_P = np.asarray(scores, np.float64)
    return bootstrap_mean(scores_P, np.ones_like(scores_P), unit="prompts", **kw)
