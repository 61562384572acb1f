"""A label job's scores per density bin: how well the labels of rare, middling and dense features
fare, each bin's mean AUC with its 95% interval over the bin's features (saeq.jobs.label_bins)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from saeq.specs.estimates import Estimate
from saeq.specs.label import Scorer


class BinScore(BaseModel):
    """One explainer's labels in one bin, as one scorer scores them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    explainer: str
    scorer: Scorer
    auc: Estimate
    """Mean AUC over the bin's features this scorer scored, bootstrap over those features."""
    flag: str | None = None
    """The scorer's judge-control flag (JUDGE_UNCALIBRATED ...) when its judge failed its control
    trials: then this mean says nothing about the labels, and is shown marked."""


class DensityBinScores(BaseModel):
    """The features of one firing-rate bin [low, high) (the last bin closed): how many could be
    labelled, how many were, and their scores."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    low: float
    high: float
    n_eligible: int
    """Features in the bin that fire in at least `min_activating` indexed contexts."""
    n_labelled: int
    scores: list[BinScore]
    """Per explainer and scorer; empty when no feature of the bin was labelled."""
