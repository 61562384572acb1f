"""Sparse probing: a topic carried by one SAE latent is read by a 1-sparse probe, while raw
activations that carry it only spread thinly over many dimensions need more."""

from __future__ import annotations

import numpy as np

from saeq.checks.probing import sparse_probing


def test_one_latent_carrying_the_topic_is_found_at_k_1():
    rng = np.random.default_rng(0)
    D = 240
    topics = ["Arts"] * 80 + ["Geography"] * 80 + ["History"] * 72 + ["Mathematics"] * 5 + [None] * 3
    is_arts = np.array([t == "Arts" for t in topics], dtype=float)
    sae = rng.exponential(0.3, (D, 50)) * (rng.random((D, 50)) < 0.2)
    sae[:, 7] = is_arts * (1 + rng.random(D))  # latent 7 fires on every Arts article, nowhere else
    direction = rng.normal(size=64) / 8
    raw = rng.normal(size=(D, 64)) + 0.15 * np.outer(is_arts, direction)  # weak, spread thin
    r = sparse_probing(sae, raw, topics, ks=[1, 5], test_share=0.3, min_per_class=20, seed=0)
    assert r["n_topics"] == 3 and r["skipped_topics"] == ["Mathematics"]
    arts = next(t for t in r["topics"] if t["topic"] == "Arts")
    assert arts["sae"]["1"] == 1.0
    assert arts["raw"]["1"] < 0.8
    assert set(r["mean_accuracy"]["raw"]) == {"1", "5", "all"}


def test_mean_accuracy_has_an_interval_over_the_test_documents():
    rng = np.random.default_rng(1)
    topics = ["Arts"] * 60 + ["Geography"] * 60 + ["History"] * 60
    sae = rng.normal(size=(180, 20))
    sae[:60, 3] += 1.0  # a weak Arts latent: accuracy well inside (0.5, 1)
    raw = rng.normal(size=(180, 16))
    r = sparse_probing(sae, raw, topics, ks=[1], test_share=0.5, min_per_class=20, seed=0)
    n_test = sum(t["n_test"] for t in r["topics"])
    assert n_test == 3 * 60  # each topic: 60 positives and 60 others, half of them test
    for kind, keys in (("sae", ("1",)), ("raw", ("1", "all"))):
        for key in keys:
            ci = r["mean_accuracy_ci"][kind][key]
            assert ci["value"] == r["mean_accuracy"][kind][key] and (ci["n"], ci["unit"]) == (n_test, "test documents")
            assert ci["low"] < ci["value"] < ci["high"] and ci["high"] - ci["low"] < 0.25, (kind, key, ci)
