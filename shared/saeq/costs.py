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
from saeq.specs import EvaluateSpec, HarvestSpec, LabelSpec, SaeConfig, SteerSpec, TrainSpec

if TYPE_CHECKING:  # saeq.teams imports redis; the job functions that read widths here need not
    from saeq.teams import TeamQuota

LATENTS_PER_UNIT = 16_384
"""A training token-step counts one unit per this many latents summed over the job's SAEs."""
GENERATED_TOKEN_UNITS = 200
"""A generated token counts this many units: generation runs one token at a time, about 180x
slower than a batched read on the CPU of FIELD-NOTES (11 against 2,000 tokens/s)."""
CHARS_PER_PROMPT_TOKEN = 4
"""The API has no tokenizer: a prompt counts one token per this many characters."""
EVALUATE_PASSES = 3
"""An evaluation runs the model three times per batch (clean, spliced, zero-ablated)."""


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


def job_cost(spec, d_in: int | None = None) -> JobCost | None:
    """The whole job's cost, or None until it can be known (a train job's widths before d_in is)."""
    if isinstance(spec, HarvestSpec):
        return _product(spec, f"{spec.max_tokens:,} tokens x {len(spec.hooks)} hooks",
                        [("max_tokens", spec.max_tokens), ("hooks", len(spec.hooks))])
    if isinstance(spec, TrainSpec):
        widths = [sae_latents(s, d_in) for s in spec.saes]
        if None in widths:
            return None
        latents = sum(widths)
        units = math.ceil(spec.total_tokens * latents / LATENTS_PER_UNIT)
        return JobCost(units, _driver(spec, [("total_tokens", spec.total_tokens), ("saes", latents)]),
                       f"{spec.total_tokens:,} tokens x {latents:,} latents / {LATENTS_PER_UNIT:,}")
    if isinstance(spec, EvaluateSpec):
        return _product(spec, f"{spec.max_tokens:,} tokens x {EVALUATE_PASSES} passes",
                        [("max_tokens", spec.max_tokens)], EVALUATE_PASSES)
    if isinstance(spec, LabelSpec):
        return _product(spec, f"{spec.index_tokens:,} tokens", [("index_tokens", spec.index_tokens)])
    if isinstance(spec, SteerSpec):
        per_prompt = 1 + len(spec.interventions) * len(spec.strengths)  # the default and every steered run
        prompt_tokens = sum(math.ceil(len(p) / CHARS_PER_PROMPT_TOKEN) for p in spec.prompts)
        generations = len(spec.prompts) * per_prompt
        units = generations * spec.max_new_tokens * GENERATED_TOKEN_UNITS + per_prompt * prompt_tokens
        factors = [("prompts", len(spec.prompts)), ("interventions", len(spec.interventions)),
                   ("strengths", len(spec.strengths)), ("max_new_tokens", spec.max_new_tokens)]
        return JobCost(units, _driver(spec, factors),
                       f"{generations:,} generations x {spec.max_new_tokens:,} new tokens x "
                       f"{GENERATED_TOKEN_UNITS} + {per_prompt * prompt_tokens:,} prompt tokens")
    return None


def forward_passes(spec, context_len: int | None = None) -> list[tuple[str, int]]:
    """(field, tokens) of each kind of forward pass the job runs: one holds the worker, and a cancel
    waits for it. `context_len`: the harvest's, for a job that takes its own from there (None:
    unknown, that pass is not counted)."""
    if isinstance(spec, HarvestSpec):
        return [("spec.batch_size", _pass(spec.batch_size, spec.max_tokens, spec.context_len))]
    passes = []
    if isinstance(spec, (EvaluateSpec, LabelSpec)) and (spec.context_len or context_len):
        tokens = spec.max_tokens if isinstance(spec, EvaluateSpec) else spec.index_tokens
        passes.append(("spec.batch_size", _pass(spec.batch_size, tokens, spec.context_len or context_len)))
    if isinstance(spec, EvaluateSpec) and spec.checks is not None:
        c = spec.checks
        passes.append(("spec.checks.batch_size", min(c.batch_size, c.n_docs) * c.context_len))
    return passes


def _pass(batch_size: int, tokens: int, context_len: int) -> int:
    """A batch of whole contexts, no more of them than the job reads."""
    return min(batch_size, math.ceil(tokens / context_len)) * context_len


_TOKENS_FIELD = {"harvest": "max_tokens", "train": "total_tokens", "evaluate": "max_tokens", "label": "index_tokens"}


def check_quota(spec, quota: TeamQuota, *, team: str, d_in: int | None = None, context_len: int | None = None,
                time_limit_s: float | None = None) -> None:
    """Raise OverQuota, naming the field, for the first per-job limit the job exceeds. Rules that
    need d_in are skipped while it is None (the worker checks them again with it); `context_len`
    is the harvest's, for an evaluate or label job that gives none."""
    tokens_field = _TOKENS_FIELD.get(spec.kind)
    if tokens_field and getattr(spec, tokens_field) > quota.max_tokens:
        raise OverQuota(f"{getattr(spec, tokens_field):,} tokens exceed team {team!r}'s quota "
                        f"max_tokens={quota.max_tokens:,}", field=f"spec.{tokens_field}")
    if isinstance(spec, TrainSpec):
        _check_latents(spec, quota, team, d_in)
    cost = job_cost(spec, d_in)
    if cost is not None and cost.units > quota.max_job_cost:
        raise OverQuota(f"the job costs {cost.formula} = {cost.units:,} token-units, beyond team {team!r}'s "
                        f"quota max_job_cost={quota.max_job_cost:,}", field=cost.field)
    for field, tokens in forward_passes(spec, context_len):
        if tokens > quota.max_batch_tokens:
            raise OverQuota(f"one forward pass of {tokens:,} tokens ({field.removeprefix('spec.')} contexts x "
                            f"their length) exceeds team {team!r}'s quota max_batch_tokens="
                            f"{quota.max_batch_tokens:,}", field=field)
    if time_limit_s is not None and time_limit_s > quota.max_time_s:
        raise OverQuota(f"{time_limit_s:g} s exceeds team {team!r}'s quota max_time_s={quota.max_time_s:g}",
                        field="time_limit_s")


def _check_latents(spec: TrainSpec, quota: TeamQuota, team: str, d_in: int | None) -> None:
    """max_latents bounds the SAEs' widths summed: every batch feeds every SAE."""
    widths = [sae_latents(s, d_in) for s in spec.saes]
    for i, (sae, width) in enumerate(zip(spec.saes, widths)):
        if width is not None and width > quota.max_latents:
            raise OverQuota(f"{width:,} latents exceed team {team!r}'s quota max_latents={quota.max_latents:,}",
                            field=latents_field(sae, i))
    known = sum(w for w in widths if w is not None)
    if known > quota.max_latents:
        raise OverQuota(f"the job's SAEs have {known:,} latents{' or more' if None in widths else ''} in all, "
                        f"beyond team {team!r}'s quota max_latents={quota.max_latents:,} (a sum over "
                        "its SAEs)", field="spec.saes")


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
