"""What a steer edit is and where it applies: a feature's edit and its trigger, a coder's read
and write hooks (SteerSites), and the checks of both against the SAE.

- add:    x + value * W_dec[f] / ||W_dec[f]|| (along the feature's unit decoder direction, in
          residual units)
- clamp:  the feature's activation set to `value`, the SAE's error term kept:
          x + (value - a_f(x)) * W_dec[f], so nothing but that feature changes
- ablate: clamp to 0
- scale:  the activation multiplied by `value`, error term kept (scale 1 changes nothing)
- cap:    the projection of x on the feature's unit decoder direction d raised to at least `value`:
          x + max(0, value - x.d) * d, the part of x orthogonal to d untouched (Neuronpedia's
          steering by orthogonal decomposition); it boosts only, never lowers a projection
Positions: all tokens, the prompt's only, or the generated ones only.
Coders (SteerSites, docs/steer.md "Coders"): a transcoder's features are read at its input hook and
its decoder written at its output hook; a crosscoder's decoder writes each layer's slice at that
layer, and only `add` applies to it (its features read every layer at once: acausal).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from saeq.errors import InvalidSpec
from saeq.ml.sae import SparseAutoencoder, TopKCrosscoder
from saeq.ml.splice import forward_order

Mode = Literal["add", "clamp", "ablate", "scale", "cap"]
Positions = Literal["all", "prompt", "generated"]


@dataclass(frozen=True)
class FeatureTrigger:
    feature: int
    threshold: float = 0.0
    """The edit applies where the feature's activation is strictly greater."""


@dataclass(frozen=True)
class FeatureEdit:
    feature: int
    mode: Mode
    value: float = 0.0
    positions: Positions = "all"
    trigger: FeatureTrigger | None = None
    """None: unconditional."""


@dataclass(frozen=True)
class SteerSites:
    """Where a coder's features are read and its decoder is written."""

    read: tuple[str, ...]
    """Hooks whose activations, side by side in this order, the coder encodes."""
    write: tuple[str, ...]
    """Hooks the decoder writes, each its block of W_dec's columns, in this order."""

    @property
    def acausal(self) -> bool:
        """The features read several hooks of a token at once: at the first one written, the
        others' activations of that token do not exist yet."""
        return len(self.read) > 1


def steer_sites(
    sae: SparseAutoencoder,
    hook: str,
    *,
    target_hook: str | None = None,
    layer_hooks: Sequence[str] | None = None,
    field: str = "spec.sae",
) -> SteerSites:
    """An SAE reads and writes `hook`; a transcoder reads `hook` and writes `target_hook`; a
    crosscoder reads and writes each of `layer_hooks` (its input's blocks, in order)."""
    if isinstance(sae, TopKCrosscoder):
        if not layer_hooks or len(layer_hooks) != sae.n_layers:
            raise InvalidSpec(
                f"the crosscoder covers {sae.n_layers} hooks, and its train job names "
                f"{len(layer_hooks or ())}: steer a crosscoder trained by a train job (activations.hooks)",
                field=field,
            )
        return SteerSites(tuple(layer_hooks), tuple(layer_hooks))
    if sae.is_transcoder:
        if target_hook is None:
            raise InvalidSpec(
                "a transcoder writes its output hook, which only its train job names "
                "(activations.target_hook): steer a transcoder trained by a train job",
                field=field,
            )
        if forward_order(target_hook) <= forward_order(hook):
            raise InvalidSpec(
                f"the transcoder reads {hook} and writes {target_hook}, which the forward pass reaches "
                "first: its features must be read before its output is written",
                field=field,
            )
        return SteerSites((hook,), (target_hook,))
    return SteerSites((hook,), (hook,))


def check_edits(
    edits: Sequence[FeatureEdit],
    sae: SparseAutoencoder,
    field: str = "spec.interventions",
    sites: SteerSites | None = None,
) -> None:
    for i, e in enumerate(edits):
        if sites is not None and sites.acausal and (e.mode != "add" or e.trigger is not None):
            where = f"{field}[{i}].mode" if e.mode != "add" else f"{field}[{i}].trigger"
            raise InvalidSpec(
                f"a crosscoder's feature activation reads all {len(sites.read)} of its layers at once, so "
                "at its first layer the token's later layers do not exist yet: clamp, ablate, scale and "
                "triggers, which read it, are refused; add writes each layer's decoder slice there",
                field=where,
            )
        if e.mode == "cap" and sites is not None and sites.read != sites.write:
            raise InvalidSpec(
                "cap lifts the projection of the hook's activation on the feature's decoder direction: "
                "a coder writes another hook than it reads, so cap applies to SAEs only (use add)",
                field=f"{field}[{i}].mode",
            )
        named = [(e.feature, f"{field}[{i}].feature")]
        if e.trigger is not None:
            named.append((e.trigger.feature, f"{field}[{i}].trigger.feature"))
        for feature, where in named:
            if not 0 <= feature < sae.d_sae:
                raise InvalidSpec(
                    f"feature {feature} is not in 0..{sae.d_sae - 1} (the SAE has d_sae={sae.d_sae})", field=where
                )
