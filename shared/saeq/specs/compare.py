"""Comparing two SAEs on the same held-out contexts: the evaluate option that asks for it, and the
typed result (each metric's paired difference with its interval and a verdict; the matched
features)."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from saeq.specs.common import _SAE_NAME, Frozen, TrainedSae, invalid
from saeq.specs.estimates import Estimate

ComparedMetric = Literal["fvu", "mse", "l0", "ce_loss_recovered", "kl_div_with_sae", "dead_fraction"]
COMPARED_METRICS: tuple[str, ...] = get_args(ComparedMetric)
"""The metrics a comparison reports, in its table's order."""


FLOOR_STATISTIC = "t(0.975, n-1) x sqrt(2) x sd of the n floor seeds' figures on the compared contexts"
"""What a seed noise floor is, per metric: the half-width of the 95% prediction interval for the
difference between two more seeds of the configuration (A - B of two seeds ~ N(0, 2 sigma^2), sigma
estimated by the floor seeds' sd with n - 1 degrees of freedom, hence Student's t)."""

NO_FLOOR = "no seed noise floor: this is evaluation noise only"
"""The note of a comparison without a floor: its intervals are over contexts, not over training seeds."""


class SeedFloor(Frozen):
    """The seed noise floor from a train job with `seeds`: that configuration's SAEs, except A and B
    where they are among them, evaluated on the compared contexts; a difference beyond noise must
    exceed the floor (FLOOR_STATISTIC) as well as have an interval excluding 0."""

    job_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    """A train job with `seeds` (list it in depends_on to wait for it)."""
    config: str | None = Field(default=None, pattern=_SAE_NAME)
    """Its configuration (`saes[i].name`, default `sae{i}`); None: A's (or B's) where it is of that
    job, else the job's only configuration."""


def _one_floor(model):
    if model.noise_floor and isinstance(model.seed_floor, SeedFloor):
        raise invalid(model, "noise_floor", "give noise_floor values or a seed_floor job, not both")
    return model


class CompareWith(Frozen):
    """Evaluate a second SAE (B) on the evaluated SAE's (A's) contexts and compare them."""

    sae: TrainedSae
    """B: an SAE of a train job at the same hook and d_model as A."""
    seed_floor: SeedFloor | Literal["auto", "off"] = "auto"
    """The seed noise floor: from this train job's seeds; 'auto': from A's train job, else B's, when
    it has `seeds` with at least 2 seeds of the compared configuration apart from A and B (each
    costs one more evaluation pass); 'off': none. Without a floor the verdict covers evaluation noise
    only (the comparison says so)."""
    noise_floor: dict[ComparedMetric, Annotated[float, Field(ge=0.0)]] = Field(default={})
    """Floors given by value instead (a difference smaller is within noise even where its interval
    excludes 0; a metric not named: the interval alone decides); with it, `seed_floor` is not used."""
    min_cosine: float = Field(default=0.7, ge=0.0, le=1.0)
    """A matched pair of features is stable when their decoder directions' cosine is at least this..."""
    min_correlation: float = Field(default=0.5, ge=-1.0, le=1.0)
    """...and their activations' Pearson correlation over the evaluated tokens at least this."""

    @model_validator(mode="after")
    def _one_floor(self):
        return _one_floor(self)


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
    floor: float | None = None
    """The noise floor |A - B| had to exceed (NoiseFloor.floors); None: no floor, evaluation noise only."""
    verdict: str
    """'A better by 0.012 [0.008, 0.016]', 'B lower by ...', 'within noise (...)'."""


class FeatureSplits(_Result):
    """Feature splitting across widths (saeq.ml.matching.feature_splits): each latent of the wider
    SAE is a child of the narrower SAE's feature nearest it by decoder cosine (if at least
    min_cosine); a feature with two or more children split. Decoder directions only."""

    narrow: Literal["a", "b"]
    min_cosine: float
    n_features: int
    """Features of the narrower SAE."""
    n_split: int
    split_fraction: Estimate
    """n_split / n_features, with Wilson's interval."""
    children: dict[int, list[int]]
    """Per split feature of the narrower SAE, its children in the wider, nearest first."""


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
    splits: FeatureSplits | None = None
    """When the two SAEs differ in width: which of the narrower one's features split in the wider."""


class NoiseFloor(_Result):
    """The noise floor a comparison's differences had to exceed."""

    source: Literal["seeds", "given"]
    """'seeds': measured here, from a seeds train job's SAEs; 'given': the spec's noise_floor values."""
    statistic: str
    """How each metric's floor was computed (FLOOR_STATISTIC for seeds)."""
    n: int
    """Seeds the floor rests on (0 for given values)."""
    floors: dict[str, float]
    """Per metric, the floor; a metric not here had none."""
    job_id: str | None = None
    """The seeds train job."""
    config: str | None = None
    saes: list[str] = []
    """The floor's SAEs, one a seed."""
    seeds: list[int] = []
    held_apart: list[str] = []
    """That job's SAEs of the configuration left out of the floor because they are A or B."""
    sd: dict[str, float] = {}
    """Per metric, the floor seeds' standard deviation (n - 1) on the compared contexts."""
    values: dict[str, list[float]] = {}
    """Per metric, each floor seed's figure on the compared contexts (in `saes` order)."""


class Comparison(_Result):
    """SAE A (the evaluate job's `sae`) against B (`compare_with.sae`) on the same contexts."""

    a: dict
    """A's provenance (job id, name, architecture, d_sae)."""
    b: dict
    metrics: list[MetricComparison]
    features: FeatureMatching
    noise_floor: NoiseFloor | None = None
    """The floor the verdicts used; None: evaluation noise only (see `noise_note`)."""
    noise_note: str = NO_FLOOR
    """What the verdicts' 'within noise' covers: 'seed noise floor: ...' or NO_FLOOR (and why none)."""


class CompareCreate(Frozen):
    """Body of `POST /v1/compare`: queue an evaluate job of A with `compare_with` B (checks off)."""

    a: TrainedSae
    b: TrainedSae
    """Both SAEs of train jobs at the same hook; A's held-out contexts are evaluated."""
    max_tokens: int = Field(default=16_384, gt=0, le=100_000_000)
    """Held-out tokens both are evaluated on (rounded up to whole contexts)."""
    seed_floor: SeedFloor | Literal["auto", "off"] = "auto"
    """As CompareWith.seed_floor."""
    noise_floor: dict[ComparedMetric, Annotated[float, Field(ge=0.0)]] = Field(default={})
    """As CompareWith.noise_floor."""
    min_cosine: float = Field(default=0.7, ge=0.0, le=1.0)
    min_correlation: float = Field(default=0.5, ge=-1.0, le=1.0)
    depends_on: list[str] = Field(default=[], max_length=32)
    """Ids of jobs that must succeed first (the two train jobs, when they are still running)."""
    name: str | None = Field(default=None, max_length=200)

    @model_validator(mode="after")
    def _one_floor(self):
        return _one_floor(self)

    def compare_with(self) -> CompareWith:
        return CompareWith(
            sae=self.b,
            seed_floor=self.seed_floor,
            noise_floor=self.noise_floor,
            min_cosine=self.min_cosine,
            min_correlation=self.min_correlation,
        )
