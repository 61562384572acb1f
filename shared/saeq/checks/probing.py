"""Sparse probing (Gurnee et al. 2023; SAEBench): can k latents tell an article's topic?

For each topic, a balanced one-vs-rest task: as many other articles as the topic has, split into
train and test. On the train split, the k features with the largest |mean(topic) - mean(rest)|
(after standardising each feature) are kept and a logistic regression is fitted on them; the score
is its test accuracy. The same is done on the raw activations, and on all raw dimensions (the dense
ceiling).
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from saeq.ml.intervals import mean_of_proportions


def _probe(X: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray, k: int | None) -> float:
    scaler = StandardScaler().fit(X[train])
    Z = np.asarray(scaler.transform(X))
    if k is not None:
        diff = np.abs(Z[train][y[train] == 1].mean(0) - Z[train][y[train] == 0].mean(0))
        Z = Z[:, np.argsort(-diff, kind="stable")[:k]]
    clf = LogisticRegression(max_iter=2000).fit(Z[train], y[train])
    return float(clf.score(Z[test], y[test]))


def sparse_probing(
    sae_DS: np.ndarray,
    raw_DM: np.ndarray,
    topics: list[str | None],
    *,
    ks: list[int],
    test_share: float,
    min_per_class: int,
    seed: int,
) -> dict:
    """Per topic and k, test accuracy of probes on SAE latents and raw activations (rows: documents;
    topic None: unlabelled, left out)."""
    rng = np.random.default_rng(seed)
    labelled = np.array([i for i, t in enumerate(topics) if t is not None])
    names = sorted({topics[i] for i in labelled})
    per_topic = []
    for name in names:
        pos = np.array([i for i in labelled if topics[i] == name])
        neg_pool = np.array([i for i in labelled if topics[i] != name])
        n = min(len(pos), len(neg_pool))
        if n < min_per_class:
            continue
        rows = np.concatenate([rng.choice(pos, n, replace=False), rng.choice(neg_pool, n, replace=False)])
        y_all = np.zeros(len(topics), dtype=int)
        y_all[pos] = 1
        train, test = (
            np.asarray(part)
            for part in train_test_split(
                rows, test_size=test_share, stratify=y_all[rows], random_state=int(rng.integers(2**31))
            )
        )
        row = {
            "topic": name,
            "n_per_class": int(n),
            "n_test": len(test),
            "sae": {str(k): _probe(sae_DS, y_all, train, test, k) for k in ks},
            "raw": {str(k): _probe(raw_DM, y_all, train, test, k) for k in ks},
        }
        row["raw"]["all"] = _probe(raw_DM, y_all, train, test, None)
        per_topic.append(row)
    mean = (
        {
            kind: {key: float(np.mean([r[kind][key] for r in per_topic])) for key in per_topic[0][kind]}
            for kind in ("sae", "raw")
        }
        if per_topic
        else {}
    )
    # Over the test documents, each probe as fitted (the variance of refitting is not in it).
    mean_ci = {
        kind: {
            key: mean_of_proportions(
                [round(r[kind][key] * r["n_test"]) for r in per_topic],
                [r["n_test"] for r in per_topic],
                unit="test documents",
                seed=seed,
            ).model_dump(mode="json")
            for key in by_key
        }
        for kind, by_key in mean.items()
    }
    return {
        "ks": list(ks),
        "n_topics": len(per_topic),
        "mean_accuracy": mean,
        "mean_accuracy_ci": mean_ci,
        "topics": per_topic,
        "skipped_topics": [t for t in names if t not in {r["topic"] for r in per_topic}],
    }
