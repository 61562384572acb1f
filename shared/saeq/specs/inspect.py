"""Features of any text (`POST /v1/features/inspect`): the request, and the per-token answer a
live worker computes with the model and the SAE it keeps loaded."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from saeq.specs.common import Frozen, HookName, ModelSpec, SaeRef, SinkRule, _require_for_imported, invalid
from saeq.specs.steer import ChatMessage

MAX_TOP_K = 64
MAX_CHOSEN_FEATURES = 64


class InspectRequest(Frozen):
    """Body of `POST /v1/features/inspect`: a text (or a chat) read by the SAE's model up to the SAE's
    hook point and encoded by the SAE, token by token."""

    sae: SaeRef
    model: ModelSpec | None = None
    """None: the model the SAE's harvest read (required for an imported SAE)."""
    hook: HookName | None = None
    """None: the hook point the SAE was trained on (required for an imported SAE)."""
    text: str | None = Field(default=None, min_length=1, max_length=8000)
    """Read as it is: no chat template, no BOS added."""
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=64)
    """A chat instead of `text`, put through the model's chat template."""
    top_k: int = Field(default=5, ge=1, le=MAX_TOP_K)
    """How many of each token's most active features to report (those with a non-zero activation)."""
    features: list[Annotated[int, Field(ge=0)]] | None = Field(
        default=None, min_length=1, max_length=MAX_CHOSEN_FEATURES
    )
    """Also report these features' activations on every token (to shade a text by one feature)."""
    label_job: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    """A label job of this SAE whose labels (and feature pages) name the features; None: the newest
    succeeded one of the caller's team, if any."""
    sinks: SinkRule = SinkRule()
    """The attention-sink rule (saeq.ml.sinks), on by default as in training: a sink's features are
    not reported."""

    @model_validator(mode="after")
    def _consistent(self) -> InspectRequest:
        if (self.text is None) == (self.messages is None):
            raise invalid(self, "text" if self.text is None else "messages", "give exactly one of text and messages")
        _require_for_imported(self, ("model", "hook"))
        return self


class FeatureActivation(Frozen):
    feature: int
    activation: float
    label: str | None = None
    """The label job's best-scored label of the feature (None: unlabelled, or no label job)."""
    link: str | None = None
    """The feature's page in the browser (None: the label job published no pages)."""


class InspectedToken(Frozen):
    position: int
    token_id: int
    text: str
    """The token decoded alone."""
    norm: float
    """Norm of the activation at the hook point."""
    sink: Literal["position0", "norm"] | None
    """Why the sink rule leaves this token out (position 0, or a norm above norm_factor x the
    harvest's median); None for an ordinary token. A sink has no `top` and null `activations`, as
    training, metrics and feature pages leave sinks out."""
    top: list[FeatureActivation]
    """The most active features, highest first."""
    activations: list[float] | None = None
    """The activations of the request's `features`, in its order (None: none asked for, or a sink)."""


class InspectResult(Frozen):
    """Answer of `POST /v1/features/inspect`."""

    sae: dict[str, Any]
    model: str
    hook: str
    label_job: str | None
    sink_rule: dict[str, float] | None
    """The rule applied (median_norm, norm_factor); None when the request turned it off."""
    features: list[int] | None
    tokens: list[InspectedToken]
    n_sinks: int
    seconds: float
