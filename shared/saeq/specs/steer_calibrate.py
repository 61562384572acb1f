"""A steer job's `calibrate` block: per feature, the smallest strength that brings its concept into
the completions within a side-effect budget, chosen on some prompts and scored on the others."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from saeq.specs.common import Frozen, invalid

Multiple = Annotated[float, Field(gt=0.0, le=1000.0)]


class SteerCalibrate(Frozen):
    """Sweep `multiples` of each feature's max activation (on the label job's index) on the fit
    prompts; keep the smallest whose mean concept gain reaches `concept_gain` with mean KL and
    perplexity within budget; then, on the held-out prompts, compare it with a fixed clamp to
    `baseline_multiple` x max activation (docs/steer.md, "Calibrated strength")."""

    features: list[Annotated[int, Field(ge=0)]] = Field(min_length=1, max_length=32)
    """The features to calibrate; each must have a label in the job's `label_job`."""
    mode: Literal["add", "clamp", "cap"] = "clamp"
    """The edit the strength is for: clamp sets the activation, add adds value x the unit decoder
    direction, cap lifts the projection on it to at least value."""
    multiples: list[Multiple] = Field(default=[0.5, 1.0, 2.0, 4.0, 8.0], min_length=1, max_length=16)
    """Strengths tried, as multiples of the feature's max activation, smallest first."""
    held_out: float = Field(default=0.5, ge=0.2, le=0.8)
    """Share of the job's prompts held out to score the choice (drawn by the job's seed); the rest
    choose it."""
    concept_gain: float = Field(default=0.05, ge=0.0, le=2.0)
    """The fit prompts' mean MiniLM similarity of completion to label, steered minus default, to reach."""
    max_kl: float | None = Field(default=2.0, gt=0.0, le=100.0)
    """Budget: the fit prompts' mean KL from the default next-token distribution (nats); None: none."""
    max_perplexity: float | None = Field(default=None, gt=1.0, le=1e6)
    """Budget: the fit prompts' mean perplexity of the steered text under the unsteered model; None: none."""
    baseline_multiple: float = Field(default=2.0, gt=0.0, le=1000.0)
    """The fixed strength the choice is compared with: a clamp to this x the max activation."""

    @model_validator(mode="after")
    def _ascending(self) -> SteerCalibrate:
        if list(self.multiples) != sorted(set(self.multiples)):
            raise invalid(
                self, "multiples", "give distinct multiples, smallest first (the smallest that works is kept)"
            )
        return self
