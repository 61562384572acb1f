"""The evaluate spec: measure an SAE's reconstruction, sparsity and spliced-in loss."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from saeq.specs.checks import Checks
from saeq.specs.common import (
    CorpusSpec,
    Frozen,
    HookName,
    ModelSpec,
    SaeRef,
    Seed,
    SinkRule,
    _require_for_imported,
    invalid,
)
from saeq.specs.compare import CompareWith


class EvaluateSpec(Frozen):
    """Measure an SAE: reconstruction, sparsity, and the model's loss with the SAE spliced in."""

    kind: Literal["evaluate"] = "evaluate"
    sae: SaeRef
    model: ModelSpec | None = None
    """None: the model the SAE's harvest read (required for an imported SAE)."""
    hook: HookName | None = None
    """None: the hook point the SAE was trained on (required for an imported SAE). A transcoder's
    input hook; a crosscoder's first hook."""
    target_hook: HookName | None = None
    """A transcoder's only: the hook its output replaces (the MLP's output). None: its train spec's
    `activations.target_hook` (required for an imported transcoder)."""
    hooks: tuple[HookName, ...] | None = Field(default=None, min_length=2, max_length=8)
    """A crosscoder's only: the hooks it reads and replaces, in its rows' order. None: its train
    spec's `activations.hooks` (required for an imported crosscoder)."""
    corpus: CorpusSpec | None = None
    """None: documents of the harvest's corpus that neither harvest nor training saw."""
    max_tokens: int = Field(default=16_384, gt=0, le=100_000_000)
    """Held-out tokens evaluated (rounded up to whole contexts)."""
    context_len: int | None = Field(default=None, ge=2, le=32_768)
    """None: the harvest's context length."""
    batch_size: int = Field(default=8, ge=1, le=1024)
    """Contexts per forward pass (each batch runs the model three times)."""
    sinks: SinkRule = SinkRule()
    dense_threshold: float = Field(default=0.1, gt=0.0, le=1.0)
    """A latent firing on more than this fraction of tokens counts as dense."""
    seed: Seed = 0
    """Document order of a builtin corpus given explicitly; seeds the checks' samples."""
    checks: Checks | None = Field(default_factory=lambda: Checks())
    """Specificity, sensitivity, completeness and sparse probing (docs/checks.md); None: skip."""
    compare_with: CompareWith | None = None
    """Also evaluate a second SAE on the same contexts and compare the two (docs/metrics.md,
    "Comparing two SAEs"); the checks, if any, are run on `sae` alone."""

    @model_validator(mode="before")
    @classmethod
    def _hook_from_hooks(cls, data: object) -> object:
        # a crosscoder's spec may name its hooks once; `hook` (what the features are read at) is the first
        if isinstance(data, dict) and data.get("hooks") and data.get("hook") is None:
            return {**data, "hook": data["hooks"][0]}
        return data

    @model_validator(mode="after")
    def _imported_needs_context(self) -> EvaluateSpec:
        if self.hooks is not None:
            if len(set(self.hooks)) != len(self.hooks):
                raise invalid(self, "hooks", f"hooks repeats a hook: {list(self.hooks)}")
            if self.hook is not None and self.hook != self.hooks[0]:
                raise invalid(self, "hook", f"a crosscoder is read at its first hook {self.hooks[0]}, not {self.hook}")
            if self.target_hook is not None:
                raise invalid(self, "target_hook", "a crosscoder names its hooks in hooks only")
        _require_for_imported(self, ("model", "hook", "corpus"))
        return self
