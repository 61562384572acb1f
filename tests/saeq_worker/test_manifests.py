"""A job reading another job's output gets that job's manifest typed, or a clear refusal naming the
job and the field: a manifest of another kind, a newer format, a missing field or garbled bytes is
never half-parsed. Through the worker's resolvers (saeq_worker.resolve) on a real local store."""

from __future__ import annotations

import copy
import json

import pytest

from saeq import keys
from saeq.errors import InvalidSpec, NotFound
from saeq.platform.store import LocalStore
from saeq.specs import EvaluateSpec
from saeq.specs.manifests import TrainManifest, manifest_json, parse_manifest
from saeq_worker.resolve import read_harvest_manifest, sae_context

TRAIN_JOB = "0" * 31 + "7"

# A train manifest as the train worker writes it (workers/saeq_worker/train.py), trimmed to one SAE.
TRAIN = {
    "format": "saeq.train/1",
    "kind": "train",
    "job_id": TRAIN_JOB,
    "saeq_version": "0.1.0",
    "created_at": 1764633600.25,
    "spec": {"kind": "train", "activations": {"job_id": "h" * 32, "hook": "blocks.1.hook_resid_post"}},
    "harvest": {
        "job_id": "h" * 32,
        "hook": "blocks.1.hook_resid_post",
        "model": {"name": "/models/tiny", "revision": None, "dtype": "float32"},
        "context_len": 64,
        "prepend_bos": True,
        "corpus": {"source": "builtin", "name": "wiki-en", "n_docs_used": 40},
        "sinks": {"rule": "position == 0 or norm > 5 x median_norm", "median_norm": 3.5, "norm_factor": 5.0},
    },
    "saes": {
        "topk": {
            "d_in": 64,
            "d_sae": 256,
            "architecture": "topk",
            "saelens": f"jobs/{TRAIN_JOB}/saes/topk/saelens/",
            "sparsify": f"jobs/{TRAIN_JOB}/saes/topk/sparsify/",
            "metrics": {"fvu": 0.21, "l0": 8.0, "dead_fraction": 0.0, "ce_loss_recovered": float("nan")},
        }
    },
    "result": {"tokens": 30720, "saes": {"topk": {"fvu": 0.21}}},
    "files": [{"sae": "topk", "format": "saelens", "key": f"jobs/{TRAIN_JOB}/saes/topk/saelens/cfg.json", "size": 9}],
}


@pytest.fixture
def store(tmp_path):
    return LocalStore(tmp_path / "store")


def _publish(store, manifest: dict | bytes, job_id: str = TRAIN_JOB) -> None:
    data = manifest if isinstance(manifest, bytes) else json.dumps(manifest, indent=1).encode()
    store.put(keys.manifest(job_id), data, content_type="application/json")


def _evaluate(store) -> InvalidSpec | NotFound:
    """What an evaluate job of the SAE of TRAIN_JOB meets when it resolves its inputs."""
    with pytest.raises((InvalidSpec, NotFound)) as e:
        sae_context(EvaluateSpec(sae={"job_id": TRAIN_JOB}), store)
    return e.value


def test_a_manifest_as_written_today_reads_and_writes_back_the_same_json():
    raw = json.dumps(TRAIN, indent=1).encode()
    manifest = parse_manifest(raw, TrainManifest, job_id=TRAIN_JOB, field="spec.sae.job_id")
    assert manifest.format == 1 and manifest.saes["topk"].d_sae == 256
    assert manifest.harvest.sinks["median_norm"] == 3.5
    assert manifest_json(manifest) == raw  # same keys, same order, NaN kept as NaN


def test_a_manifest_of_another_kind_is_refused_naming_the_job(store):
    _publish(store, {**TRAIN, "kind": "evaluate", "format": "saeq.evaluate/1"})
    e = _evaluate(store)
    assert isinstance(e, InvalidSpec) and e.field == "spec.sae.job_id"
    assert f"job {TRAIN_JOB} is a evaluate job, not a train job" in e.message


def test_a_newer_format_is_refused_not_half_read(store):
    _publish(store, {**TRAIN, "format": "saeq.train/2", "saes_v2": {}})
    e = _evaluate(store)
    assert isinstance(e, InvalidSpec) and e.field == "spec.sae.job_id"
    assert "format saeq.train/2, newer than this version of saeq reads (saeq.train/1)" in e.message
    assert TRAIN_JOB in e.message


@pytest.mark.parametrize(
    "edit, where",
    [
        (lambda m: m.pop("saes"), "saes: Field required"),
        (lambda m: m["saes"]["topk"].pop("saelens"), "saes.topk.saelens: Field required"),
        (lambda m: m["harvest"].update(context_len="long"), "harvest.context_len"),
        (lambda m: m.update(trained_by="someone else's tool"), "trained_by: Extra inputs are not permitted"),
    ],
)
def test_a_missing_or_foreign_field_is_named(store, edit, where):
    manifest = copy.deepcopy(TRAIN)
    edit(manifest)
    _publish(store, manifest)
    e = _evaluate(store)
    assert isinstance(e, InvalidSpec) and e.field == "spec.sae.job_id"
    assert f"the train manifest of job {TRAIN_JOB} is not one this version of saeq reads" in e.message
    assert where in e.message


@pytest.mark.parametrize("data", [b'{"format": "saeq.train/1", "kin', b"[1, 2]", b"\xff\xfe"])
def test_garbled_bytes_are_refused(store, data):
    _publish(store, data)
    e = _evaluate(store)
    assert isinstance(e, InvalidSpec) and e.field == "spec.sae.job_id" and TRAIN_JOB in e.message


def test_an_unpublished_manifest_is_not_found(store):
    e = _evaluate(store)
    assert isinstance(e, NotFound) and e.field == "spec.sae.job_id"
    assert "has published no output" in e.message


def test_a_train_manifest_is_no_harvest(store):
    _publish(store, TRAIN)
    with pytest.raises(InvalidSpec, match="is a train job, not a harvest job") as e:
        read_harvest_manifest(store, TRAIN_JOB, "blocks.1.hook_resid_post", field="spec.activations")
    assert e.value.field == "spec.activations.job_id"
