"""A figure with its 95% interval and the n it rests on: what every metric saeq reports carries
beside its point value. Computed by saeq.ml.intervals; plain data, so the client shows it."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class Estimate(BaseModel):
    """A point value and its interval. NaN bounds: no interval (fewer than two groups, or the
    value itself undefined, e.g. CE recovered with no loss gap)."""

    # NaN allowed (unlike specs): an undefined figure is reported as such, not dropped.
    model_config = ConfigDict(frozen=True, extra="forbid")

    value: float
    """The point estimate, the figure reported without an interval."""
    low: float
    """Lower end of the interval."""
    high: float
    """Upper end of the interval."""
    n: int = Field(ge=0)
    """How many independent units the interval rests on (contexts, documents, latents, trials)."""
    unit: str
    """What `n` counts, plural: "contexts", "latents"."""
    method: Literal[
        "bootstrap", "basic_bootstrap", "paired_bootstrap", "wilson", "newcombe", "jeffreys", "two_stage_bootstrap"
    ]
    """Percentile bootstrap over the units (resampled whole), the basic bootstrap (the same
    resamples' quantiles reflected about the value, for a figure whose resamples are biased), the
    same resamples for both sides of a difference, Wilson's score interval for a proportion,
    Newcombe's for a difference of two independent proportions (from their Wilson intervals), or a
    mean of proportions drawn from their Jeffreys posteriors (saeq.ml.intervals.mean_of_proportions),
    or a mean over units resampled whole, each drawn unit's value redrawn from its own sampling
    distribution (saeq.jobs.label_summary: features, each scored on a few windows)."""
    confidence: float = Field(default=0.95, gt=0.0, lt=1.0)
    """Nominal coverage of the interval."""

    def text(self, fmt: str = "{:.3f}") -> str:
        """'0.174 [0.168, 0.180] (n=512 contexts)'; the bounds left out when there is no interval."""
        if math.isnan(self.low) or math.isnan(self.high):
            return f"{fmt.format(self.value)} (n={self.n:,} {self.unit}, no interval)"
        return f"{fmt.format(self.value)} [{fmt.format(self.low)}, {fmt.format(self.high)}] (n={self.n:,} {self.unit})"

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high
