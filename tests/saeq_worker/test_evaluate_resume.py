"""An evaluate job whose worker is killed after it stored the metric pass's sums goes on from them:
the next attempt says where it resumed (a `resumed` event), and its metrics, histograms, densities
and checks are bit-identical to an uninterrupted run's (the sums go on from exactly where they
stood). Real API, Redis, S3 and worker."""

from __future__ import annotations

import json
import time

import pytest
import torch

from saeq import keys
from saeq.jobs.evaluate import EvalProgress, _Stats
from saeq.specs import EvaluateSpec
from saeq_worker.evaluate import PASS_CHUNKS
from tests.fixtures_stack import make_stack


def _random_stats() -> _Stats:
    g = torch.Generator().manual_seed(0)
    s = _Stats(d_in=6, d_sae=10, T=4)
    s.n, s.sum_sq_x, s.sum_cos, s.n_loss = 17, 1 / 3, float(torch.rand(1, generator=g)), 11
    s.ce, s.kl = {"clean": 0.1, "sae": 2 / 7, "zero": 9.5}, {"sae": 1e-17, "zero": 3.25}
    s.sum_x = torch.randn(6, generator=g, dtype=torch.float64)
    s.pos_sum_x = torch.randn(4, 6, generator=g, dtype=torch.float64)
    s.fires = torch.randint(0, 5, (10,), generator=g).double()
    s.l0_all = [torch.randint(0, 9, (n,), generator=g) for n in (3, 5)]
    s.add_contexts(torch.rand(3, s.group_sums.shape[1], generator=g).double(), torch.randn(3, 6, generator=g).double())
    return s


def test_the_pass_progress_reads_back_exactly_and_refuses_torn_bytes():
    stats = _random_stats()
    data = EvalProgress(12, 1536, 7, stats).to_bytes({"job_id": "j", "spec_sha256": "s"})
    back, meta = EvalProgress.from_bytes(data)
    assert meta == {"job_id": "j", "spec_sha256": "s"}
    assert (back.batches, back.tokens, back.n_sinks) == (12, 1536, 7)
    scalars = ("n", "sum_sq_x", "sum_sq_resid", "sum_cos", "sum_l0", "sum_l1", "ce", "kl", "n_loss", "n_contexts")
    for name in scalars:
        assert getattr(back.stats, name) == getattr(stats, name), name  # floats by repr: exact
    for name in ("sum_x", "fires", "pos_n", "pos_sum_x", "pos_sq_x", "pos_sq_resid", "group_sums", "group_sum_x"):
        assert torch.equal(getattr(back.stats, name), getattr(stats, name)), name
    assert torch.equal(torch.cat(back.stats.l0_all), torch.cat(stats.l0_all))
    for torn in (data[: len(data) // 2], b"", b"not safetensors at all"):
        with pytest.raises(ValueError, match="not an evaluation's progress"):
            EvalProgress.from_bytes(torn)


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_srv, s3_srv):
    with make_stack(tmp_path_factory.mktemp("stack"), redis_srv, s3_srv) as st:
        yield st


def _spec(train_id: str) -> EvaluateSpec:
    # 2-context batches: many batches, so the pass takes long enough to be interrupted mid-way.
    return EvaluateSpec.model_validate(
        {
            "sae": {"job_id": train_id, "name": "topk"},
            "max_tokens": 8192,
            "batch_size": 2,
            "checks": {"n_docs": 48, "context_len": 32, "probing": {"ks": [1, 5], "min_per_class": 4}},
        }
    )


def _metrics_doc(client, job_id: str, dest) -> dict:
    (path,) = client.download(job_id, dest, prefix="report/metrics.json")
    return json.loads(path.read_text())


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_a_killed_evaluation_resumes_its_metric_pass(stack, client_module, train_job, tmp_path):
    client = client_module
    spec = _spec(train_job["id"])
    job = client.submit(spec)
    prefix = keys.partial_prefix(job["id"])
    deadline = time.monotonic() + 300
    while not any(a["key"].startswith(prefix) for a in client.artifacts(job["id"])["artifacts"]):
        assert client.get(job["id"])["state"] in ("queued", "running"), "ended before the pass was kept"
        assert time.monotonic() < deadline, "no partial result stored"
        time.sleep(0.05)
    stack.kill("worker")
    stack.respawn("worker")
    done = client.wait(job["id"], timeout=600)

    assert done["attempts"] == 2
    resumed = [e for e in client.events(job["id"]) if e["phase"] == "resumed"]
    assert len(resumed) == 1, resumed  # the pass; the checks had not started
    kept = resumed[0]["figures"]
    assert 1 <= kept["chunks_kept"] < PASS_CHUNKS and 0 < kept["tokens"] < spec.max_tokens
    assert not [a for a in client.artifacts(job["id"])["artifacts"] if a["key"].startswith(prefix)]

    reference = client.wait(client.submit(spec)["id"], timeout=600)
    assert reference["attempts"] == 1
    ours, theirs = client.manifest(job["id"]), client.manifest(reference["id"])
    assert ours["counts"]["n_tokens"] >= spec.max_tokens
    assert json.dumps(ours["metrics"]) == json.dumps(theirs["metrics"])  # NaN-safe: bit-identical
    assert ours["counts"] == theirs["counts"] and ours["checks"] == theirs["checks"]
    a, b = _metrics_doc(client, job["id"], tmp_path / "a"), _metrics_doc(client, reference["id"], tmp_path / "b")
    assert json.dumps(ours["intervals"]) == json.dumps(theirs["intervals"])  # the per-context sums resumed too
    for part in ("l0_histogram", "log_density_histogram", "fvu_by_position", "feature_density", "checks"):
        assert json.dumps(a[part]) == json.dumps(b[part]), part
