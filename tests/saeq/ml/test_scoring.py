"""A label's scores carry 95% intervals over the scored windows: balanced accuracy as a mean of the
two classes' recalls, AUC by a stratified bootstrap; both cover a known truth at about the nominal rate."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
from sklearn.metrics import roc_auc_score

from saeq.ml.scoring import auc_interval, classification_scores

PHI = NormalDist().cdf


def test_scores_keep_their_keys_and_add_intervals_that_contain_the_scores():
    s = classification_scores([1, 1, 1, 0, 0, 0], [0.9, 0.8, 0.3, 0.1, 0.6, 0.2])
    d = s.to_dict()
    assert set(d) == {"accuracy", "balanced_accuracy", "auc", "n", "intervals"}
    for metric in ("balanced_accuracy", "auc"):
        est = s.intervals[metric]
        assert est.value == d[metric] and est.contains(d[metric]) and est.low < est.high
        assert est.n == 6 and est.unit == "windows" and d["intervals"][metric]["low"] == est.low
    assert classification_scores([1, 1, 1, 0, 0, 0], [0.9, 0.8, 0.3, 0.1, 0.6, 0.2]) == s  # seeded
    embedding = classification_scores([1, 1, 0, 0], [0.9, 0.4, 0.5, 0.1], threshold=False)
    assert set(embedding.intervals) == {"auc"} and embedding.balanced_accuracy is None
    one_class = classification_scores([1, 1, 1], [0.9, 0.8, 0.1]).to_dict()
    assert "intervals" not in one_class and one_class["auc"] is None


def test_the_stratified_auc_bootstrap_matches_sklearn_and_ties_count_half():
    rng = np.random.default_rng(3)
    y = [1] * 15 + [0] * 12
    p = np.round(rng.random(27), 1).tolist()  # ties between the classes
    est = auc_interval(y, p)
    assert math.isclose(est.value, roc_auc_score(y, p)) and est.contains(est.value)


def test_the_intervals_cover_a_known_truth_at_about_the_nominal_rate():
    """The judge's P(yes) = Phi(z), z ~ N(0.8, 1) on activating windows and N(-0.3, 1) on silent
    ones: the true AUC is Phi(1.1 / sqrt 2) and the true recalls at 0.5 are Phi(0.8) and Phi(0.3)."""
    mu_pos, mu_neg, n = 0.8, -0.3, 40
    true_auc = PHI((mu_pos - mu_neg) / math.sqrt(2))
    true_balanced = (PHI(mu_pos) + PHI(-mu_neg)) / 2
    covered = {"auc": 0, "balanced_accuracy": 0}
    for trial in range(40):
        rng = np.random.default_rng(100 + trial)
        z = np.concatenate([rng.normal(mu_pos, 1, n), rng.normal(mu_neg, 1, n)])
        s = classification_scores([1] * n + [0] * n, [PHI(v) for v in z])
        for metric in covered:
            covered[metric] += s.intervals[metric].contains(true_auc if metric == "auc" else true_balanced)
    assert covered["auc"] >= 36 and covered["balanced_accuracy"] >= 36, covered
