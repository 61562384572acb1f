"""Comparing two SAEs on the same held-out contexts: the evaluate option that asks for it, and the
typed result (each metric's paired difference with its interval and a verdict; the matched
features)."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from saeq.specs.common import Frozen, TrainedSae
from saeq.specs.estimates import Estimate

ComparedMetric = Literal["fvu", "mse", "l0", "ce_loss_recovered", "kl_div_with_sae", "dead_fraction"]
COMPARED_METRICS: tuple[str, ...] = get_args(ComparedMetric)
"""The metrics a comparison reports, in its table's order."""


class CompareWith(Frozen):
    """Evaluate a second SAE (B) on the evaluated SAE's (A's) contexts and compare them."""

    sae: TrainedSae
    """B: an SAE of a train job at the same hook and d_model as A."""
    noise_floor: dict[ComparedMetric, Annotated[float, Field(ge=0.0)]] = Field(default={})
    """A difference smaller than this (e.g. the seed-to-seed spread of the metric) is within noise
    even where its interval excludes 0; a metric not named: the interval alone decides."""
    min_cosine: float = Field(default=0.7, ge=0.0, le=1.0)
    """A matched pair of features is stable when their decoder directions' cosine is at least this..."""
    min_correlation: float = Field(default=0.5, ge=-1.0, le=1.0)
    """...and their activations' Pearson correlation over the evaluated tokens at least this."""


class _Result(BaseModel):
    # NaN allowed (unlike specs): an undefined figure is reported as such.
    model_config = ConfigDict(frozen=True, extra="forbid")


class MetricComparison(_Result):
    metric: str
    a: Estimate
    b: Estimate
    difference: Estimate
    """a - b, its interval a paired bootstrap over the shared contexts (Newcombe's over latents for
    dead_fraction: the two SAEs' latents are not paired)."""
    better: Literal["a", "b"] | None
    """Which is better beyond noise; None: within noise, or a metric with no better direction (L0)."""
    verdict: str
    """'A better by 0.012 [0.008, 0.016]', 'B lower by ...', 'within noise (...)'."""


class FeatureMatching(_Result):
    """A's features matched one-to-one to B's (Hungarian on decoder cosine), confirmed on their
    activations' correlation over the evaluated tokens."""

    min_cosine: float
    min_correlation: float
    n_matched: int
    """min(d_sae of A, d_sae of B) pairs."""
    n_alive: int
    """A's latents that fired on the evaluated tokens: a latent that never fires has no activations
    to confirm its match on, so it is counted neither stable nor in the fraction."""
    n_stable: int
    stable_fraction: Estimate
    """Stable pairs / A's live latents (n_alive), with Wilson's interval."""
    mean_cosine: float
    match: list[int]
    """Per feature of A, its match in B (-1: none, when B is narrower)."""
    cosine: list[float]
    """Per feature of A, the decoder cosine to its match (NaN: none)."""
    correlation: list[float]
    """Per feature of A, the activations' correlation with its match (NaN: none, or one never fired)."""


class Comparison(_Result):
    """SAE A (the evaluate job's `sae`) against B (`compare_with.sae`) on the same contexts."""

    a: dict
    """A's provenance (job id, name, architecture, d_sae)."""
    b: dict
    metrics: list[MetricComparison]
    features: FeatureMatching


class CompareCreate(Frozen):
    """Body of `POST /v1/compare`: queue an evaluate job of A with `compare_with` B (checks off)."""

    a: TrainedSae
    b: TrainedSae
    """Both SAEs of train jobs at the same hook; A's held-out contexts are evaluated."""
    max_tokens: int = Field(default=16_384, gt=0, le=100_000_000)
    """Held-out tokens both are evaluated on (rounded up to whole contexts)."""
    noise_floor: dict[ComparedMetric, Annotated[float, Field(ge=0.0)]] = Field(default={})
    """As CompareWith.noise_floor."""
    min_cosine: float = Field(default=0.7, ge=0.0, le=1.0)
    min_correlation: float = Field(default=0.5, ge=-1.0, le=1.0)
    depends_on: list[str] = Field(default=[], max_length=32)
    """Ids of jobs that must succeed first (the two train jobs, when they are still running)."""
    name: str | None = Field(default=None, max_length=200)

    def compare_with(self) -> CompareWith:
        return CompareWith(
            sae=self.b, noise_floor=self.noise_floor, min_cosine=self.min_cosine, min_correlation=self.min_correlation
        )
