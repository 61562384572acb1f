"""Which features a label job draws from each density bin, and its scores per bin, on an index
whose features fire at planted rates."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from saeq.jobs.label import select_features
from saeq.jobs.label_bins import density_bin_scores, select_density_bins
from saeq.ml.features import FeatureIndex
from saeq.specs import DensityBins, LabelSpec, TrainedSae
from saeq.specs.estimates import Estimate
from saeq.specs.label import JUDGE_UNCALIBRATED, JudgeControl

EDGES = [0.001, 0.01, 0.1, 1.0]
C, T = 100, 10  # 1,000 ordinary tokens: a feature firing on n tokens has density n / 1000
FIRES = {f: 4 + f for f in range(6)}  # bin 0: 0.4%-0.9%
FIRES |= {6 + i: 20 + 10 * i for i in range(6)}  # bin 1: 2%-7%
FIRES |= {12 + i: 200 + 100 * i for i in range(6)}  # bin 2: 20%-70%
FIRES[20] = C * T  # density 1.0: the last bin includes its upper edge
ONE_CONTEXT, SILENT = 18, 19  # 5 tokens of one context (too few contexts); never fires
BIN_OF = {f: (0 if f < 6 else 1 if f < 12 else 2) for f in FIRES}


@pytest.fixture(scope="module")
def index() -> FeatureIndex:
    acts = torch.zeros(C * T, 21)
    for f, n in FIRES.items():
        acts[torch.linspace(0, C * T - 1, n).long(), f] = 1.0  # spacing >= T: n contexts for n <= C
    acts[:5, ONE_CONTEXT] = 1.0
    ids = torch.arange(C * T).view(C, T) % 50
    docs = torch.arange(C).repeat_interleave(T).view(C, T)
    return FeatureIndex.from_dense(ids, docs, torch.zeros(C, T, dtype=torch.bool), acts.view(C, T, 21))


def _spec(**select) -> LabelSpec:
    return LabelSpec(sae=TrainedSae(job_id="0" * 32), select=DensityBins(edges=EDGES, **select))


def test_each_bin_gives_per_bin_features_of_its_own_density(index):
    spec = _spec(per_bin=3)
    chosen = select_features(index, spec)
    assert spec.select is not None and chosen == select_density_bins(index, spec.select, spec.min_activating)
    assert [BIN_OF[f] for f in chosen] == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # rarest bin first
    density = index.density()
    for b in range(3):
        in_bin = [f for f in chosen if BIN_OF[f] == b]
        assert all(EDGES[b] <= density[f] <= EDGES[b + 1] for f in in_bin)
        assert [density[f] for f in in_bin] == sorted((density[f] for f in in_bin), reverse=True)


def test_a_small_bin_gives_all_its_eligible_features_and_nothing_else(index):
    chosen = select_features(index, _spec(per_bin=50))
    assert sorted(chosen) == sorted(FIRES)  # neither the one-context feature nor the silent one
    assert ONE_CONTEXT not in chosen and SILENT not in chosen


def test_the_draw_is_fixed_by_the_seed(index):
    draws = [tuple(select_features(index, _spec(per_bin=2, seed=s))) for s in range(6)]
    assert draws[0] == tuple(select_features(index, _spec(per_bin=2, seed=0)))
    assert len(set(draws)) > 1  # 6 of 15 pairs per bin: six seeds all alike would be no draw


@pytest.mark.parametrize(
    ("select", "extra", "loc"),
    [
        ({"edges": [0.1, 0.01, 1.0]}, {}, ("select", "edges")),
        ({"edges": [0.0, 1.0]}, {}, ("select", "edges", 0)),
        ({"edges": [0.01, 2.0]}, {}, ("select", "edges", 1)),
        ({"edges": [0.01]}, {}, ("select", "edges")),
        ({"per_bin": 0}, {}, ("select", "per_bin")),
        ({"by": "most_wanted"}, {}, ("select", "by")),
        ({}, {"features": [1, 2]}, ("select",)),
        ({}, {"n_most_active": 8}, ("n_most_active",)),
    ],
)
def test_a_bad_selection_is_refused_naming_its_field(select, extra, loc):
    with pytest.raises(ValidationError) as e:
        LabelSpec.model_validate({"kind": "label", "sae": {"job_id": "0" * 32}, "select": select, **extra})
    assert [err["loc"] for err in e.value.errors()] == [loc]


def test_scores_per_bin_average_over_the_bins_features_and_mark_a_flagged_judge(index):
    def record(f, det, emb):
        return {"feature": f, "explainer": "e", "scores": {"detection": {"auc": det}, "embedding": {"auc": emb}}}

    records = [record(0, 0.6, 0.9), record(3, 0.8, 0.7), record(12, 0.9, None), record(SILENT, 0.5, 0.5)]
    wilson = Estimate(value=0.5, low=0.4, high=0.6, n=100, unit="answers", method="wilson")
    flag = f"{JUDGE_UNCALIBRATED} (control accuracy 0.50)"
    controls = [
        JudgeControl(scorer="detection", judge="j", accuracy=wilson, by_kind={}, calibrated=False, flag=flag),
        JudgeControl(scorer="embedding", judge="m", accuracy=wilson, by_kind={}, calibrated=True, flag=None),
    ]
    bins = density_bin_scores(index, records, _spec(), controls)
    assert [(b.low, b.high, b.n_eligible, b.n_labelled) for b in bins] == [
        (0.001, 0.01, 6, 2),  # the one-context feature is in the bin but not eligible
        (0.01, 0.1, 6, 0),
        (0.1, 1.0, 7, 1),
    ]  # the silent feature is in no bin
    det, emb = bins[0].scores
    assert (det.scorer, det.flag, emb.scorer, emb.flag) == ("detection", flag, "embedding", None)
    assert det.auc.value == pytest.approx(0.7) and det.auc.n == 2 and det.auc.unit == "features"
    assert 0.6 <= det.auc.low <= 0.7 <= det.auc.high <= 0.8
    assert emb.auc.value == pytest.approx(0.8)
    assert bins[1].scores == []
    (only,) = bins[2].scores  # no embedding AUC for feature 12: nothing to average
    assert only.scorer == "detection" and only.auc.value == 0.9 and only.auc.n == 1
