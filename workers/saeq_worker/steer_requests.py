"""What the batch steer job and the live steer path both make of a request: its edits, its
prompt's token ids, the hooks its coder reads and writes (saeq.jobs.steer.SteerSites) and the
provenance naming them. Neither adapter imports the other; both import this."""

from __future__ import annotations

from saeq.jobs.steer import FeatureEdit, FeatureTrigger, SteerSites, chat_prompt, steer_sites
from saeq_worker.resolve import SaeContext


def _edits(interventions, strength: float = 1.0) -> list[FeatureEdit]:
    """The spec's edits, values times `strength` (a trigger's threshold is not scaled)."""
    return [
        FeatureEdit(
            i.feature,
            i.mode,
            i.value * strength,
            i.positions,
            FeatureTrigger(i.trigger.feature, i.trigger.threshold) if i.trigger else None,
        )
        for i in interventions
    ]


def _prompt_ids(lm, prompt: str, chat: bool) -> list[int]:
    if chat:
        return chat_prompt(lm, [{"role": "user", "content": prompt}])
    return lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]


def _sites(ctx: SaeContext, field: str) -> SteerSites:
    return steer_sites(ctx.sae, ctx.hook, target_hook=ctx.target_hook, layer_hooks=ctx.layer_hooks, field=field)


def _with_sites(provenance: dict, sites: SteerSites) -> dict:
    """The SAE's provenance and the hooks its features are read at and its decoder writes."""
    return {**provenance, "reads": list(sites.read), "writes": list(sites.write)}
