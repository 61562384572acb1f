"""A label job's summary: each explainer's mean scores with 95% intervals over its features, an
uncalibrated judge's means kept apart (with theirs), and records from before intervals still read."""

from __future__ import annotations

import math

import numpy as np

from saeq.jobs.label_summary import summarize_labels
from saeq.specs.estimates import Estimate
from saeq.specs.label import JudgeControl, Scorer

AUCS = [0.9, 0.7, 0.8, 0.6, 0.75, 0.85]


def _records() -> list[dict]:
    out = []
    for f, auc in enumerate(AUCS):
        ci = {"value": auc, "low": auc - 0.1, "high": auc + 0.1, "n": 20, "unit": "windows", "method": "bootstrap"}
        detection = {"accuracy": 0.5, "balanced_accuracy": 0.5, "auc": 0.5, "n": 20}  # an old record: no intervals
        out.append(
            {
                "feature": f,
                "explainer": "local",
                "scores": {
                    "embedding": {"accuracy": None, "auc": auc, "n": 20, "intervals": {"auc": ci}},
                    "detection": detection,
                },
            }
        )
    return out


def _control(scorer: Scorer, calibrated: bool) -> JudgeControl:
    acc = Estimate(value=0.5, low=0.4, high=0.6, n=96, unit="trials", method="wilson")
    return JudgeControl(
        scorer=scorer, judge="j", accuracy=acc, by_kind={}, calibrated=calibrated, flag=None if calibrated else "bad"
    )


def test_each_mean_has_an_interval_over_the_features_and_the_excluded_keep_theirs():
    (s,) = summarize_labels(_records(), [_control("detection", False), _control("embedding", True)]).values()
    assert s["n_features"] == 6 and set(s["scores"]) == {"embedding"}
    assert math.isclose(s["scores"]["embedding"]["auc"], sum(AUCS) / 6)
    assert set(s["scores"]["embedding"]) == {"auc"}  # neither n, nor None, nor a record's intervals are averaged
    est = Estimate.model_validate(s["intervals"]["embedding"]["auc"])
    assert est.unit == "features" and est.n == 6 and est.value == s["scores"]["embedding"]["auc"]
    assert min(AUCS) < est.low < est.value < est.high < max(AUCS)
    assert s["excluded"]["detection"] == {"accuracy": 0.5, "balanced_accuracy": 0.5, "auc": 0.5, "flag": "bad"}
    flat = Estimate.model_validate(s["intervals"]["detection"]["auc"])
    assert (flat.low, flat.value, flat.high) == (0.5, 0.5, 0.5)  # every feature scored 0.5: no spread


def test_a_single_feature_has_a_mean_but_no_interval():
    (s,) = summarize_labels(_records()[:1]).values()
    est = Estimate.model_validate(s["intervals"]["embedding"]["auc"])
    assert est.value == 0.9 and est.n == 1 and math.isnan(est.low)


def _judged(accuracies: list[float], n: int) -> list[dict]:
    return [
        {"feature": f, "explainer": "local", "scores": {"detection": {"accuracy": a, "n": n}}}
        for f, a in enumerate(accuracies)
    ]


def test_a_judge_scoring_every_feature_alike_still_gets_the_width_its_windows_allow():
    """32 features at 4 of 8 windows right: over features alone that is 0.500 [0.500, 0.500]; each
    feature's 8 windows leave its accuracy far from known, and the mean's interval says so."""
    (s,) = summarize_labels(_judged([0.5] * 32, 8)).values()
    est = Estimate.model_validate(s["intervals"]["detection"]["accuracy"])
    assert est.method == "two_stage_bootstrap" and est.n == 32
    assert est.low < 0.47 and est.high > 0.53 and est.low < est.value == 0.5 < est.high


def test_the_mean_accuracy_interval_covers_the_population_mean_at_about_the_nominal_rate():
    """Features with true accuracies uniform on [0.4, 0.8] (population mean 0.6), 32 drawn, each
    scored on 8 windows: the 95% interval covers 0.6 in at least 36 of 40 draws."""
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(40):
        p_F = rng.uniform(0.4, 0.8, 32)
        accuracies = (rng.binomial(8, p_F) / 8).tolist()
        (s,) = summarize_labels(_judged(accuracies, 8)).values()
        est = Estimate.model_validate(s["intervals"]["detection"]["accuracy"])
        covered += est.low <= 0.6 <= est.high
    assert covered >= 36
