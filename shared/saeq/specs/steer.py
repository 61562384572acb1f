"""The steer spec and the live steering request: feature edits applied during generation."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from saeq.specs.common import Frozen, HookName, ModelSpec, SaeRef, Seed, _require_for_imported, invalid
from saeq.specs.label import JudgeSpec
from saeq.specs.steer_calibrate import SteerCalibrate


class Trigger(Frozen):
    """The condition of a conditional edit: it applies at a token only while this feature of the
    same SAE, read at that token before any edit there, is above `threshold`."""

    feature: int = Field(ge=0)
    """Index of the trigger latent in the steering SAE, 0..d_sae-1."""
    threshold: float = Field(default=0.0, ge=-1e6, le=1e6)
    """The edit applies where the trigger's activation is strictly greater (0: wherever it fires)."""


class Intervention(Frozen):
    """One feature edit at the SAE's hook point during generation."""

    feature: int = Field(ge=0)
    """Index of the SAE latent, 0..d_sae-1."""
    mode: Literal["add", "clamp", "ablate", "scale", "cap"] = "add"
    """add: value x the feature's unit decoder direction; clamp: the feature's activation set
    to value, the SAE's error term kept (only this feature changes); ablate: clamp to 0;
    scale: the activation multiplied by value, error term kept; cap: the projection on the unit
    decoder direction raised to at least value, the orthogonal part kept (SAEs only)."""
    value: float = Field(default=0.0, ge=-1e6, le=1e6)
    """add: coefficient in residual-stream units; clamp: the activation; scale: the factor;
    cap: the least projection; ablate: ignored.
    Steer jobs multiply it by each of their `strengths`. Live requests (`/v1/steer`, the chat
    endpoint) that leave it out of an add, clamp or cap edit get the feature's calibrated value
    (and its mode, unless they name one): docs/steer.md, "Calibrated strength"."""
    positions: Literal["all", "prompt", "generated"] = "all"
    trigger: Trigger | None = None
    """None: the edit applies at every token of `positions`; else only at those where the trigger
    feature fires above its threshold (docs/steer.md, "Conditional steering")."""


class SteerSet(Frozen):
    """Interventions applied together."""

    name: str | None = Field(default=None, max_length=200)
    edits: list[Intervention] = Field(min_length=1, max_length=16)


class SteerSpec(Frozen):
    """Prompts x intervention sets x strengths: steered and default completions side by side, with
    side effects (KL from the default, perplexity under the unsteered model, concept similarity)."""

    kind: Literal["steer"] = "steer"
    sae: SaeRef
    model: ModelSpec | None = None
    """None: the model the SAE's harvest read (required for an imported SAE)."""
    hook: HookName | None = None
    """None: the hook point the SAE was trained on (required for an imported SAE)."""
    prompts: list[Annotated[str, Field(min_length=1, max_length=8000)]] = Field(min_length=1, max_length=256)
    chat: bool = True
    """Wrap each prompt as a user message in the model's chat template."""
    interventions: list[SteerSet] = Field(default=[], max_length=32)
    """Empty only with `calibrate`."""
    strengths: list[Annotated[float, Field(ge=-1e4, le=1e4)]] = Field(default=[1.0], min_length=1, max_length=16)
    max_new_tokens: int = Field(default=32, ge=1, le=1024)
    temperature: float = Field(default=0.0, ge=0.0, le=5.0)
    """0: greedy. Steered and default runs of a prompt share the seed."""
    seed: Seed = 0
    label_job: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    """A label job of this SAE: the features' labels name them in the output and the concept
    similarity (embedding of the completion against the label) is reported."""
    judge: JudgeSpec | None = None
    """Rate every completion, default and steered, as AxBench does (concept, instruction, fluency,
    0-2 each, their harmonic mean), and report the steering score per (set, strength) with a 95%
    interval over the prompts (docs/steer.md). Needs `label_job`: the labels are the concept. A
    local model (`backend: local`) or an OpenAI-protocol endpoint the deployment allows
    (`backend: openai`, as a label job's judge); with `calibrate`, it scores both arms."""
    calibrate: SteerCalibrate | None = None
    """Find each listed feature's strength (fit and held-out prompts split from `prompts`); the
    choices go to `calibration.json`, named by the manifest, and the chat endpoint uses them."""

    @model_validator(mode="after")
    def _imported_needs_context(self) -> SteerSpec:
        _require_for_imported(self, ("model", "hook"))
        if not self.interventions and self.calibrate is None:
            raise invalid(self, "interventions", "give at least one intervention set, or a calibrate block")
        if self.calibrate is not None and self.label_job is None:
            raise invalid(self, "calibrate", "calibration scores the concept the labels name: give label_job too")
        if self.calibrate is not None and len(self.prompts) < 4:
            raise invalid(self, "prompts", "calibrate needs at least 4 prompts: 2 to fit, 2 held out")
        if self.judge is not None and self.label_job is None:
            raise invalid(self, "judge", "a judge rates the concept the labels name: give label_job too")
        return self


class ChatMessage(Frozen):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=32_000)


class SteerRequest(Frozen):
    """Body of `POST /v1/steer`: one prompt, answered in seconds by a worker that keeps the model
    and the SAE loaded."""

    sae: SaeRef | None = None
    """None: no SAE, plain generation with `model` (the chat endpoint without `steering`)."""
    model: ModelSpec | None = None
    """None: the model the SAE's harvest read."""
    hook: HookName | None = None
    prompt: str | None = Field(default=None, min_length=1, max_length=8000)
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=64)
    """A chat, instead of `prompt`; always put through the chat template."""
    chat: bool = True
    """Put `prompt` through the model's chat template as a user message."""
    interventions: list[Intervention] = Field(default=[], max_length=16)
    max_new_tokens: int = Field(default=32, ge=1, le=512)
    temperature: float = Field(default=0.0, ge=0.0, le=5.0)
    seed: Seed = 0
    include_default: bool = True
    """Also generate without interventions (same seed), and report KL and perplexity."""

    @model_validator(mode="after")
    def _consistent(self) -> SteerRequest:
        if (self.prompt is None) == (self.messages is None):
            raise invalid(
                self, "prompt" if self.prompt is None else "messages", "give exactly one of prompt and messages"
            )
        _require_for_imported(self, ("model", "hook"))
        if self.sae is None and self.interventions:
            raise invalid(self, "interventions", "interventions need an sae")
        return self
