"""The checks as part of an evaluate job, through the API and a real worker: a label job's labels
are rated for specificity, and the report holds all four checks with their plots."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from saeq.client.client import ApiError
from saeq.specs import EvaluateSpec, LabelSpec
from saeq.specs.manifests import (
    EvaluateManifest,
    HarvestManifest,
    LabelManifest,
    TrainManifest,
    manifest_json,
    parse_manifest,
)

pytestmark = pytest.mark.integration


def _checks(label_job: str | None, judge: dict) -> dict:
    return {
        "label_job": label_job,
        "n_docs": 96,
        "context_len": 32,
        "specificity": {"judge": judge, "max_features": 4, "n_zero": 2, "n_bins": 2, "n_per_bin": 2},
        "sensitivity": {"n_pairs": 16, "max_doc_share": 0.25},
        "probing": {"ks": [1, 5], "min_per_class": 6},
    }


def test_evaluate_reports_the_four_checks_with_plots(client_module, harvest_job, train_job, chromium, tmp_path):
    client = client_module
    label = client.submit(
        LabelSpec(
            sae={"job_id": train_job["id"]},
            index_tokens=4096,
            n_most_active=6,
            explainers=[{"backend": "metadata"}],
            judge=None,
            scorers=["embedding"],
            n_explain_examples=4,
            n_score_examples=4,
            browser=False,
        )
    )
    label = client.wait(label["id"], timeout=300)
    assert client.manifest(label["id"])["browser"] is None  # no pages asked for: none written
    r = client.http.get(f"/v1/browser/labels/{label['id']}/features")
    assert r.status_code == 404 and "browser=false" in r.json()["detail"]
    judge = {"backend": "local", "model": harvest_job["spec"]["model"], "max_new_tokens": 4}
    spec = EvaluateSpec(sae={"job_id": train_job["id"]}, max_tokens=1024, checks=_checks(label["id"], judge))
    done = client.wait(client.submit(spec)["id"], timeout=400)
    manifest = client.manifest(done["id"])
    # What the workers publish reads back typed and writes back as the same JSON.
    for job_id, model in ((label["id"], LabelManifest), (done["id"], EvaluateManifest)):
        written = client.manifest(job_id)
        assert json.dumps(parse_manifest(written, model, job_id=job_id, field="id").model_dump()) == json.dumps(written)
    summary = manifest["checks"]
    assert summary["specificity"]["n_features"] == 4 and summary["specificity"]["rater"].startswith("local:")
    control = summary["specificity"]["rater_control"]  # the rater's planted control trials, and its verdict
    assert control["scorer"] == "specificity" and control["accuracy"]["unit"] == "trials"
    assert (summary["specificity"]["flag"] is None) == control["calibrated"]
    (embedding,) = client.manifest(label["id"])["judge_controls"]
    assert embedding["scorer"] == "embedding" and embedding["accuracy"]["n"] > 0
    assert set(summary["sensitivity"]) == {"fr", "es"}
    assert summary["sensitivity"]["fr"]["n_pairs"] == 16
    assert summary["completeness"]["chemical elements"]["coverage_ci"]["n"] == 96
    assert summary["probing"]["accuracy_ci"]["sae"]["1"]["unit"] == "test documents"
    elements = summary["completeness"]["chemical elements"]
    assert elements["n_members"] == 96 and 0 <= elements["n_covered"] <= 96
    assert summary["probing"]["n_topics"] >= 1 and set(summary["probing"]["sae"]) == {"1", "5"}
    names = {p.rsplit("/", 1)[1] for p in manifest["plots"]}
    assert {"specificity.png", "sensitivity.png", "completeness_0.png", "probing.png"} <= names

    files = {f.name: f for f in client.download(done["id"], tmp_path, prefix="report/")}
    doc = json.loads(files["metrics.json"].read_text())["checks"]
    assert doc["label_job"] == label["id"]
    rated = doc["specificity"]["features"][0]["contexts"]
    assert rated and all(0 <= c["rating"] <= 3 and c["activation"] >= 0 for c in rated)
    page = files["report.md"].read_text()
    assert "## Checks" in page and "![completeness_0.png](completeness_0.png)" in page
    n_contexts = manifest["counts"]["n_contexts"]
    assert re.search(rf"\| FVU \(ordinary tokens\) \| [\d.]+ \[[\d.]+, [\d.]+\] \(n={n_contexts} contexts\) \|", page)
    assert files["completeness_0.png"].read_bytes().startswith(b"\x89PNG")

    cli = subprocess.run(
        [
            sys.executable,
            "-m",
            "saeq.client.cli",
            "--url",
            client.url,
            "--api-key",
            client.api_key,
            "report",
            done["id"],
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert "specificity (local:" in cli.stdout and "completeness, chemical elements:" in cli.stdout
    assert "rater control accuracy (planted" in cli.stdout
    assert "sensitivity en->fr (16 article pairs" in cli.stdout and "sparse probing" in cli.stdout
    assert "(n=96 members)" in cli.stdout and "(n=16 article pairs)" in cli.stdout  # the checks' intervals
    assert re.search(rf"CE-loss recovered +-?[\d.]+ \[-?[\d.]+, -?[\d.]+\] \(n={n_contexts} contexts\)", cli.stdout)

    # The browser's SAEs page shows the same figures with their intervals: the evaluation panel and the checks.
    page = chromium.new_page(viewport={"width": 1200, "height": 900})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{client.url}/browse#/")
    page.locator("[name=api_key]").fill(client.api_key)
    page.locator("#signin button").click()
    panel = page.locator(f"#evaluation-{train_job['id']}-topk")
    panel.wait_for()
    text = panel.inner_text()
    assert done["id"][:8] in text
    num = r"-?[\d.]+"
    assert re.search(rf"FVU \(ordinary tokens\)\s+{num} \[{num}, {num}\] \(n={n_contexts} contexts\)", text)
    assert re.search(rf"L0\s+{num} \[{num}, {num}\] \(n={n_contexts} contexts\)", text)
    assert re.search(rf"mean Spearman {num} \[{num}, {num}\] \(n=\d+ ", text)
    assert re.search(rf"rater control accuracy {num} \[{num}, {num}\] \(n=\d+ trials\)", text)
    assert re.search(rf"pooled recall {num} \[{num}, {num}\] \(n=16 article pairs\)", text)
    assert re.search(rf"coverage {num} \[{num}, {num}\] \(n=96 members\)", text)
    assert re.search(rf"SAE accuracy {num} \[{num}, {num}\] \(n=\d+ test documents\)", text)
    fvu_cell = page.locator("#saes tbody tr").first.locator("td").nth(3).inner_text()
    assert re.search(rf"^{num}\s+\[{num}, {num}\] n={n_contexts}$", fvu_cell)
    assert errors == [] and "[object" not in page.content()


def test_a_label_job_of_another_kind_sae_or_unfinished_is_refused_at_submit(
    client_module, train_job, harvest_job, tmp_path
):
    client = client_module
    label = client.submit(
        LabelSpec(
            sae={"job_id": train_job["id"]},
            explainers=[{"backend": "metadata"}],
            judge=None,
            scorers=["embedding"],
            index_tokens=2048,
        )
    )
    cases = [
        (harvest_job["id"], [], "not a label job"),
        (label["id"], [], "list it in depends_on"),
        (label["id"], [label["id"]], None),
    ]
    for label_job, depends_on, refusal in cases:
        spec = EvaluateSpec(
            sae={"job_id": train_job["id"]},
            max_tokens=512,
            checks={"label_job": label_job, "sensitivity": None, "completeness": None, "probing": None},
        )
        if refusal is None:
            client.cancel(client.submit(spec, depends_on=depends_on)["id"])
            continue
        with pytest.raises(ApiError) as e:
            client.submit(spec, depends_on=depends_on)
        assert e.value.status == 422 and "spec.checks.label_job" in str(e.value) and refusal in str(e.value)
    # Paths under the stack's local-path root (pytest's temporary root), so only the label job is wrong.
    other_sae = EvaluateSpec(
        sae={"source": "path", "path": str(tmp_path / "sae")},
        model={"name": str(tmp_path / "model")},
        hook="blocks.1.hook_resid_post",
        corpus={"name": "wiki-en"},
        checks={"label_job": label["id"]},
    )
    with pytest.raises(ApiError) as e:
        client.submit(other_sae, depends_on=[label["id"]])
    assert e.value.status == 422 and "labelled the SAE" in str(e.value)
    client.cancel(label["id"])


def test_held_out_text_follows_the_harvests_document_order(
    s3_srv, train_job, harvest_job, monkeypatch, tmp_path_factory
):
    """Evaluate and label read the documents after those the harvest used, in the harvest's order:
    the harvest's seed, not the job's, or held-out text would overlap the training text."""
    from saeq.platform.store import S3Store
    from saeq_worker.celery_app import settings
    from saeq_worker.resolve import sae_context

    # As in the stack's workers: the tiny model the harvest read lies under pytest's basetemp.
    monkeypatch.setattr(settings, "local_path_roots", [str(tmp_path_factory.getbasetemp().resolve())])

    store = S3Store(s3_srv.endpoint, s3_srv.access_key, s3_srv.secret_key, s3_srv.bucket)
    ctx = sae_context(EvaluateSpec(sae={"job_id": train_job["id"]}, seed=7), store)
    assert ctx.seed(7) == harvest_job["spec"]["seed"] == 0
    assert ctx.corpus.first_doc == harvest_job_docs(store, harvest_job) + 1
    given = sae_context(EvaluateSpec(sae={"job_id": train_job["id"]}, seed=7, corpus={"name": "wiki-en"}), store)
    assert given.seed(7) == 7


def test_harvest_and_train_manifests_read_back_typed_as_written(s3_srv, harvest_job, train_job):
    from saeq.platform.store import S3Store

    store = S3Store(s3_srv.endpoint, s3_srv.access_key, s3_srv.secret_key, s3_srv.bucket)
    for job, model in ((harvest_job, HarvestManifest), (train_job, TrainManifest)):
        raw = store.get(job["manifest_key"])
        typed = parse_manifest(raw, model, job_id=job["id"], field="id")
        assert typed.job_id == job["id"] and typed.format == 1
        assert manifest_json(typed) == raw  # byte for byte: the worker wrote it from this model


def harvest_job_docs(store, harvest_job) -> int:
    return json.loads(store.get(harvest_job["manifest_key"]))["corpus"]["n_docs_used"]
