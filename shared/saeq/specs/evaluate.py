"""The evaluate spec: measure an SAE's reconstruction, sparsity and spliced-in loss."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from saeq.specs.checks import Checks
from saeq.specs.common import CorpusSpec, Frozen, HookName, ModelSpec, SaeRef, Seed, SinkRule, _require_for_imported
from saeq.specs.compare import CompareWith


class EvaluateSpec(Frozen):
    """Measure an SAE: reconstruction, sparsity, and the model's loss with the SAE spliced in."""

    kind: Literal["evaluate"] = "evaluate"
    sae: SaeRef
    model: ModelSpec | None = None
    """None: the model the SAE's harvest read (required for an imported SAE)."""
    hook: HookName | None = None
    """None: the hook point the SAE was trained on (required for an imported SAE)."""
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

    @model_validator(mode="after")
    def _imported_needs_context(self) -> EvaluateSpec:
        _require_for_imported(self, ("model", "hook", "corpus"))
        return self
