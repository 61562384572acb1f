"""Live label search in a worker process, on a real local store: the label embeddings it keeps
are bounded (a few label jobs, a cap on labels per job, said in the reply), and a cancel stops
the embedding of a large label job between batches."""

from __future__ import annotations

import json

import pytest

from saeq import keys
from saeq.errors import Cancelled
from saeq.platform.store import LocalStore
from saeq.specs import LabelSearch
from saeq.specs.manifests import FeatureIndexEntry, LabelManifest


def _publish_label_job(store: LocalStore, job_id: str, n_labels: int) -> None:
    lines = [
        json.dumps(
            {
                "feature": i,
                "label": f"topic {i}",
                "description": f"text about topic {i}",
                "explainer": "local",
                "scores": {"detection": {"auc": 0.5}},
            }
        )
        for i in range(n_labels)
    ]
    store.put(keys.labels_file(job_id), ("\n".join(lines) + "\n").encode())
    # A whole label manifest, as a label worker publishes it: the steer worker reads it typed.
    manifest = LabelManifest(
        job_id=job_id,
        created_at=0.0,
        spec={},
        sae={"source": "path"},
        model={},
        hook="blocks.0.hook_resid_post",
        corpus={},
        prompt_version="test",
        sink_rule=None,
        index=FeatureIndexEntry(
            key=keys.job_prefix(job_id) + "features.safetensors",
            n_contexts=0,
            context_len=0,
            n_ordinary_tokens=0,
            n_sinks=0,
            nnz=0,
        ),
        labels_key=keys.labels_file(job_id),
        n_features=n_labels,
        summary={},
        browser=None,
        labelling_s=0.0,
    )
    store.put(keys.manifest(job_id), manifest.model_dump_json().encode())


@pytest.fixture
def steer(monkeypatch):
    from saeq_worker import steer_labels as steer

    monkeypatch.setattr(steer, "_EMBEDDED", type(steer._EMBEDDED)())
    return steer


def test_a_worker_keeps_the_labels_of_a_few_label_jobs_and_says_how_many_it_searched(steer, tmp_path, monkeypatch):
    monkeypatch.setattr(steer, "MAX_SEARCH_LABELS", 5, raising=False)
    store = LocalStore(tmp_path / "store")
    ids = [f"{i:032x}" for i in range(6)]  # more than a worker keeps
    for job_id in ids:
        _publish_label_job(store, job_id, 7)
    for job_id in ids:
        out = steer.search_labels(LabelSearch(label_job=job_id, query="topic 3", top=3), store, device="cpu")
        assert (out["labels_searched"], out["labels_total"]) == (5, 7)
        assert out["results"][0]["feature"] == 3
    assert len(ids) > steer.EMBEDDED_JOBS
    assert list(steer._EMBEDDED) == ids[-steer.EMBEDDED_JOBS :]  # the least recently searched dropped


def test_a_cancel_stops_embedding_a_label_job_between_batches(steer, tmp_path, monkeypatch):
    monkeypatch.setattr(steer, "EMBED_BATCH", 4, raising=False)
    store = LocalStore(tmp_path / "store")
    big = "b" * 32
    _publish_label_job(store, big, 40)
    calls = []

    def check():  # the caller gives up after the first two batches
        calls.append(1)
        if len(calls) > 4:
            raise Cancelled("gone")

    with pytest.raises(Cancelled):
        steer.search_labels(LabelSearch(label_job=big, query="topic"), store, device="cpu", check=check)
    assert len(calls) == 5 and big not in steer._EMBEDDED
