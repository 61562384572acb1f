"""What one job costs, and the per-job quota rules on it: the one place they are written. The API
checks them at submit; the train worker checks them again once it knows a harvest's d_model. No torch.

Cost is counted in token-units, one unit a token the model reads in a batch at one hook point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from saeq.errors import InvalidSpec
from saeq.specs import (
    Checks,
    EvaluateSpec,
    HarvestSpec,
    LabelSpec,
    OnlineActivations,
    SaeConfig,
    SteerSpec,
    TrainSpec,
)
from saeq.specs.train_seeds import sae_runs

if TYPE_CHECKING:
    from saeq.specs.quotas import TeamQuota

LATENTS_PER_UNIT = 16_384
"""A training token-step counts one unit per this many latents summed over the job's SAEs."""
GENERATED_TOKEN_UNITS = 200
"""A generated token counts this many units: generation runs one token at a time, about 180x
slower than a batched read on the CPU of FIELD-NOTES (11 against 2,000 tokens/s)."""
CHARS_PER_PROMPT_TOKEN = 4
"""The API has no tokenizer: a prompt counts one token per this many characters."""
EVALUATE_PASSES = 3
"""An evaluation runs the model three times per batch (clean, spliced, zero-ablated)."""
JUDGE_PROMPT_TOKENS = 256
"""A judge's question (detection or fuzzing: instructions, the label, one window) is a prompt of
about this many tokens, read in a batch and answered from the next token's distribution (nothing
generated): one unit a token, as a harvest's."""


class OverQuota(InvalidSpec):
    """A job larger than its team's quota; `field` names the spec field that drives the excess. The
    API answers 403; a worker that finds it fails the job (code invalid_spec)."""


@dataclass(frozen=True)
class JobCost:
    units: int
    field: str
    """The factor nearest its own limit in the spec (the first on a tie): what to lower."""
    formula: str
    """How `units` was counted, in words and numbers."""


def sae_latents(sae: SaeConfig, d_in: int | None) -> int | None:
    """An SAE's width (d_sae), or None while d_in is unknown and only the expansion factor is given."""
    return sae.d_sae or (sae.expansion_factor * d_in if d_in else None)


def latents_field(sae: SaeConfig, i: int) -> str:
    return f"spec.saes.{i}.{'d_sae' if sae.d_sae else 'expansion_factor'}"


def job_cost(spec, d_in: int | None = None, n_features: int | None = None) -> JobCost | None:
    """The whole job's cost, or None until it can be known (a train job's widths before d_in is).
    `n_features`: how many features a label job without `features` or `n_most_active` labels (its
    SAE's width; None: unknown, and so is the cost)."""
    if isinstance(spec, HarvestSpec):
        return _product(
            spec,
            f"{spec.max_tokens:,} tokens x {len(spec.hooks)} hooks",
            [("max_tokens", spec.max_tokens), ("hooks", len(spec.hooks))],
        )
    if isinstance(spec, TrainSpec):
        widths = [sae_latents(run.config, d_in) for run in sae_runs(spec)]  # each seed's SAE too
        known = [w for w in widths if w is not None]
        if len(known) < len(widths):
            return None
        latents = sum(known)
        units = math.ceil(spec.total_tokens * latents / LATENTS_PER_UNIT)
        return JobCost(
            units,
            _driver(spec, [("total_tokens", spec.total_tokens), ("saes", latents)]),
            f"{spec.total_tokens:,} tokens x {latents:,} latents / {LATENTS_PER_UNIT:,}",
        )
    if isinstance(spec, EvaluateSpec):
        parts = [
            (
                spec.max_tokens * EVALUATE_PASSES,
                "spec.max_tokens",
                f"{spec.max_tokens:,} tokens x {EVALUATE_PASSES} passes",
            )
        ]
        if spec.checks is not None:
            parts += _checks_parts(spec.checks)
        return _sum(parts)
    if isinstance(spec, LabelSpec):
        return _label_cost(spec, n_features)
    if isinstance(spec, SteerSpec):
        per_prompt = 1 + len(spec.interventions) * len(spec.strengths)  # the default and every steered run
        if spec.calibrate is not None:  # at most: every multiple on a prompt, and the two held-out arms
            per_prompt += len(spec.calibrate.features) * (len(spec.calibrate.multiples) + 2)
        prompt_tokens = sum(math.ceil(len(p) / CHARS_PER_PROMPT_TOKEN) for p in spec.prompts)
        generations = len(spec.prompts) * per_prompt
        units = generations * spec.max_new_tokens * GENERATED_TOKEN_UNITS + per_prompt * prompt_tokens
        factors = [
            ("prompts", len(spec.prompts)),
            ("interventions", len(spec.interventions)),
            ("strengths", len(spec.strengths)),
            ("max_new_tokens", spec.max_new_tokens),
        ]
        return JobCost(
            units,
            _driver(spec, factors),
            f"{generations:,} generations x {spec.max_new_tokens:,} new tokens x "
            f"{GENERATED_TOKEN_UNITS} + {per_prompt * prompt_tokens:,} prompt tokens",
        )
    return None


def _label_cost(spec: LabelSpec, n_features: int | None) -> JobCost | None:
    """The feature index, then per feature each LLM explainer's label (max_new_tokens generated,
    GENERATED_TOKEN_UNITS each) and the judge's questions: 2 x n_score_examples for detection
    (activating and as many silent windows), n_score_examples for fuzzing."""
    if spec.features is not None:
        n, n_field = len(spec.features), "spec.features"
    elif spec.select is not None:
        n, n_field = spec.select.max_features, "spec.select.per_bin"
    elif spec.n_most_active is not None:
        n, n_field = spec.n_most_active, "spec.n_most_active"
    elif n_features is not None:
        n, n_field = n_features, "spec.n_most_active"  # None: every feature; a number bounds them
    else:
        return None
    parts = [(spec.index_tokens, "spec.index_tokens", f"{spec.index_tokens:,} index tokens")]
    for i, e in enumerate(spec.explainers):
        if e.backend != "metadata":
            parts.append(
                (
                    n * e.max_new_tokens * GENERATED_TOKEN_UNITS,
                    _bigger(n_field, n, _FEATURES_LIMIT, f"spec.explainers.{i}.max_new_tokens", e),
                    f"{n:,} features x {e.max_new_tokens} new tokens x {GENERATED_TOKEN_UNITS}",
                )
            )
    questions = sum({"detection": 2, "fuzzing": 1}.get(s, 0) for s in spec.scorers) * spec.n_score_examples
    if spec.judge is not None and questions:
        field = (
            "spec.n_score_examples"
            if spec.n_score_examples / _limit(LabelSpec.model_fields["n_score_examples"]) >= n / _FEATURES_LIMIT
            else n_field
        )
        parts.append(
            (
                n * questions * JUDGE_PROMPT_TOKENS,
                field,
                f"{n:,} features x {questions} judge questions x {JUDGE_PROMPT_TOKENS} tokens",
            )
        )
    return _sum(parts)


def _bigger(n_field: str, n: int, n_limit: float, tokens_field: str, explainer) -> str:
    """The field nearer its limit: the features' count, or the explainer's max_new_tokens."""
    tokens_limit = _limit(type(explainer).model_fields["max_new_tokens"])
    return tokens_field if explainer.max_new_tokens / tokens_limit >= n / n_limit else n_field


ABSORPTION_TOKENS_PER_EXAMPLE = 6
"""'{word} has the first letter: W' and its separator, in SmolLM2's tokens (100,436 prompt tokens
for 26 letters x 128 words x 4 examples, fewer words than asked: docs/checks.md)."""


def _checks_parts(c: Checks) -> list[tuple[int, str, str]]:
    """Each check reads its articles' first context_len tokens through the model: n_docs of them
    (specificity, completeness and probing), or n_pairs in each language (sensitivity)."""
    docs = {
        "specificity": c.n_docs,
        "completeness": c.n_docs,
        "probing": c.n_docs,
        "sensitivity": c.sensitivity.n_pairs * (1 + len(c.sensitivity.languages)) if c.sensitivity else 0,
    }
    driver = "spec.checks." + max(
        ("n_docs", "context_len"), key=lambda f: getattr(c, f) / _limit(Checks.model_fields[f])
    )
    parts = [
        (
            n * c.context_len,
            driver if check != "sensitivity" else "spec.checks.sensitivity.n_pairs",
            f"{check}: {n:,} articles x {c.context_len} tokens",
        )
        for check, n in docs.items()
        if getattr(c, check) is not None
    ]
    if (a := c.absorption) is not None:  # one prompt per word: its solved examples, then the word
        words = len(a.letters) * a.words_per_letter
        per_word = (a.n_examples + 1) * ABSORPTION_TOKENS_PER_EXAMPLE
        parts.append(
            (
                words * per_word,
                "spec.checks.absorption.words_per_letter",
                f"absorption: at most {words:,} words x {per_word} prompt tokens",
            )
        )
    return parts


def _sum(parts: list[tuple[int, str, str]]) -> JobCost:
    """Parts (units, field, formula) added up; the field is the largest part's."""
    return JobCost(
        sum(u for u, _, _ in parts),
        max(parts, key=lambda p: p[0])[1],
        " + ".join(f"{f} ({u:,})" if len(parts) > 1 else f for u, _, f in parts),
    )


def forward_passes(spec, context_len: int | None = None) -> list[tuple[str, int]]:
    """(field, tokens) of each kind of forward pass the job runs: one holds the worker, and a cancel
    waits for it. `context_len`: the harvest's, for a job that takes its own from there (None:
    unknown, that pass is not counted)."""
    if isinstance(spec, HarvestSpec):
        return [("spec.batch_size", _pass(spec.batch_size, spec.max_tokens, spec.context_len))]
    passes = []
    if isinstance(spec, TrainSpec) and isinstance(spec.activations, OnlineActivations):
        a = spec.activations
        passes.append(("spec.activations.batch_size", a.batch_size * a.context_len))
    if isinstance(spec, (EvaluateSpec, LabelSpec)) and (spec.context_len or context_len):
        tokens = spec.max_tokens if isinstance(spec, EvaluateSpec) else spec.index_tokens
        own_len = spec.context_len or context_len
        assert own_len is not None  # the condition above
        passes.append(("spec.batch_size", _pass(spec.batch_size, tokens, own_len)))
    if isinstance(spec, EvaluateSpec) and spec.checks is not None:
        c = spec.checks
        passes.append(("spec.checks.batch_size", min(c.batch_size, c.n_docs) * c.context_len))
    return passes


def _pass(batch_size: int, tokens: int, context_len: int) -> int:
    """A batch of whole contexts, no more of them than the job reads."""
    return min(batch_size, math.ceil(tokens / context_len)) * context_len


_TOKENS_FIELD = {"harvest": "max_tokens", "train": "total_tokens", "evaluate": "max_tokens", "label": "index_tokens"}


def check_quota(
    spec,
    quota: TeamQuota,
    *,
    team: str,
    d_in: int | None = None,
    context_len: int | None = None,
    time_limit_s: float | None = None,
    n_features: int | None = None,
) -> None:
    """Raise OverQuota, naming the field, for the first per-job limit the job exceeds. Rules that
    need d_in are skipped while it is None (the worker checks them again with it); `context_len`
    is the harvest's, for an evaluate or label job that gives none; `n_features`: the SAE's width,
    for a label job of every feature (None: quota.max_latents, the widest SAE the team trains)."""
    tokens_field = _TOKENS_FIELD.get(spec.kind)
    if tokens_field and getattr(spec, tokens_field) > quota.max_tokens:
        raise OverQuota(
            f"{getattr(spec, tokens_field):,} tokens exceed team {team!r}'s quota max_tokens={quota.max_tokens:,}",
            field=f"spec.{tokens_field}",
        )
    if isinstance(spec, TrainSpec):
        _check_latents(spec, quota, team, d_in)
    cost = job_cost(spec, d_in, n_features or quota.max_latents)
    if cost is not None and cost.units > quota.max_job_cost:
        raise OverQuota(
            f"the job costs {cost.formula} = {cost.units:,} token-units, beyond team {team!r}'s "
            f"quota max_job_cost={quota.max_job_cost:,}",
            field=cost.field,
        )
    for field, tokens in forward_passes(spec, context_len):
        if tokens > quota.max_batch_tokens:
            raise OverQuota(
                f"one forward pass of {tokens:,} tokens ({field.removeprefix('spec.')} contexts x "
                f"their length) exceeds team {team!r}'s quota max_batch_tokens="
                f"{quota.max_batch_tokens:,}",
                field=field,
            )
    if time_limit_s is not None and time_limit_s > quota.max_time_s:
        raise OverQuota(
            f"{time_limit_s:g} s exceeds team {team!r}'s quota max_time_s={quota.max_time_s:g}", field="time_limit_s"
        )


def _check_latents(spec: TrainSpec, quota: TeamQuota, team: str, d_in: int | None) -> None:
    """max_latents bounds the SAEs' widths summed: every batch feeds every SAE."""
    runs = sae_runs(spec)  # with seeds, every configuration once per seed
    widths = [sae_latents(run.config, d_in) for run in runs]
    for run, width in zip(runs, widths, strict=True):
        if width is not None and width > quota.max_latents:
            raise OverQuota(
                f"{width:,} latents exceed team {team!r}'s quota max_latents={quota.max_latents:,}",
                field=latents_field(run.config, run.index),
            )
    known = sum(w for w in widths if w is not None)
    if known > quota.max_latents:
        raise OverQuota(
            f"the job's SAEs have {known:,} latents{' or more' if None in widths else ''} in all, "
            f"beyond team {team!r}'s quota max_latents={quota.max_latents:,} (a sum over "
            "its SAEs)",
            field="spec.saes",
        )


def _product(spec: BaseModel, formula: str, factors: list[tuple[str, int]], times: int = 1) -> JobCost:
    return JobCost(math.prod(v for _, v in factors) * times, _driver(spec, factors), formula)


def _driver(spec: BaseModel, factors: list[tuple[str, int]]) -> str:
    """`spec.<field>` of the factor nearest the largest value its field allows."""
    return "spec." + max(factors, key=lambda f: f[1] / _field_limit(spec, f[0]))[0]


def _field_limit(spec: BaseModel, name: str) -> float:
    if name == "saes":  # a sum of widths: as many SAEs as allowed, each as wide as allowed
        return _limit(TrainSpec.model_fields["saes"]) * _limit(SaeConfig.model_fields["d_sae"])
    return _limit(type(spec).model_fields[name])


def _limit(field: FieldInfo) -> float:
    """The field's `le` or `max_length`."""
    for m in field.metadata:
        for attr in ("le", "max_length"):
            if getattr(m, attr, None) is not None:
                return float(getattr(m, attr))
    return math.inf


_FEATURES_LIMIT = _limit(LabelSpec.model_fields["features"])
"""The most features a label job may list: the scale of `n_most_active` too, which has no limit."""
