"""The jobs API as a user sees it, on real Redis and S3 (no worker: jobs stay queued)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from saeq_api.main import create_app

HARVEST = {"kind": "harvest", "max_tokens": 4096}


def submit(api, spec=HARVEST, **body):
    return api.post("/v1/jobs", json={"spec": spec, **body})


def test_submit_get_list(api):
    r = submit(api, name="first")
    assert r.status_code == 201, r.text
    job = r.json()
    assert job["state"] == "queued" and job["kind"] == "harvest" and job["queue"] == "gpu"
    assert job["spec"]["hooks"] == ["blocks.14.hook_resid_post"]  # defaults are filled in and stored
    assert api.get(f"/v1/jobs/{job['id']}").json()["name"] == "first"
    assert [j["id"] for j in api.get("/v1/jobs").json()["jobs"]] == [job["id"]]


def test_list_filters_and_pages(api):
    ids = [submit(api).json()["id"] for _ in range(5)]
    api.post(f"/v1/jobs/{ids[0]}/cancel")
    page1 = api.get("/v1/jobs", params={"limit": 2, "state": "queued"}).json()
    assert len(page1["jobs"]) == 2 and page1["next_before"] is not None
    page2 = api.get("/v1/jobs", params={"limit": 2, "state": "queued", "before": page1["next_before"]}).json()
    seen = [j["id"] for j in page1["jobs"] + page2["jobs"]]
    assert seen == ids[:0:-1]  # newest first, the cancelled one filtered out
    assert page2["next_before"] is None
    assert [j["id"] for j in api.get("/v1/jobs", params={"state": "cancelled"}).json()["jobs"]] == [ids[0]]
    assert api.get("/v1/jobs", params={"kind": "train"}).json()["jobs"] == []
    assert api.get("/v1/jobs", params={"state": "bogus"}).status_code == 422


def test_idempotency_key_returns_the_same_job(api):
    first = api.post("/v1/jobs", json={"spec": HARVEST}, headers={"Idempotency-Key": "abc"})
    again = api.post("/v1/jobs", json={"spec": HARVEST}, headers={"Idempotency-Key": "abc"})
    assert first.status_code == 201 and again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert len(api.get("/v1/jobs").json()["jobs"]) == 1


def _fields(resp) -> list[str]:
    assert resp.status_code == 422, resp.text
    return [d["field"] for d in resp.json()["detail"]]


def test_bad_specs_are_refused_naming_the_field(api):
    assert _fields(submit(api, {"kind": "nope"})) == ["spec"]
    assert "Input tag 'nope'" in submit(api, {"kind": "nope"}).json()["detail"][0]["msg"]
    assert _fields(submit(api, {**HARVEST, "bogus": 1})) == ["spec.bogus"]
    assert _fields(submit(api, {**HARVEST, "max_tokens": -5})) == ["spec.max_tokens"]
    r = submit(api, {**HARVEST, "hooks": ["blocks.40.hook_resid_post"]})
    assert "has 30 blocks" in r.json()["detail"][0]["msg"]
    assert _fields(submit(api, {**HARVEST, "hooks": ["layer15"]})) == ["spec.hooks"]
    assert _fields(submit(api, {**HARVEST, "model": {"name": "not a model id!"}})) == ["spec.model.name"]
    r = submit(api, {**HARVEST, "corpus": {"source": "upload", "upload_id": "0" * 32}})
    assert _fields(r) == ["spec.corpus.upload_id"] and "no upload" in r.json()["detail"][0]["msg"]
    evaluate = {"kind": "evaluate", "sae": {"job_id": "0" * 32}}
    bad_checks = [
        ({"specificity": {"judge": {"backend": "embedding", "model": "x"}}}, "spec.checks.specificity.judge.model"),
        ({"probing": {"ks": [0]}}, "spec.checks.probing.ks.0"),
        (
            {"completeness": {"categories": [{"name": "one", "members": [{"name": "a"}]}]}},
            "spec.checks.completeness.categories.0.members",
        ),
    ]
    for checks, field in bad_checks:
        assert _fields(submit(api, {**evaluate, "checks": checks})) == [field]
    assert api.get("/v1/jobs").json()["jobs"] == []  # nothing was stored


def test_cancel_queued_job(api):
    job = submit(api).json()
    r = api.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.json()["state"] == "cancelled" and r.json()["error"]["code"] == "cancelled"
    assert api.post(f"/v1/jobs/{job['id']}/cancel").json()["state"] == "cancelled"  # idempotent
    assert api.post(f"/v1/jobs/{'f' * 32}/cancel").status_code == 404


def test_depends_on(api):
    first = submit(api).json()
    second = submit(api, depends_on=[first["id"]]).json()
    assert second["state"] == "queued" and second["depends_on"] == [first["id"]]
    assert _fields(submit(api, depends_on=["0" * 32])) == ["depends_on.0"]
    api.post(f"/v1/jobs/{first['id']}/cancel")
    failed = api.get(f"/v1/jobs/{second['id']}").json()
    assert failed["state"] == "failed" and failed["error"]["code"] == "upstream_failed"
    r = submit(api, depends_on=[first["id"]])
    assert _fields(r) == ["depends_on.0"] and "cancelled" in r.json()["detail"][0]["msg"]


def test_events_and_artifacts_of_a_queued_job(api):
    job = submit(api).json()
    events = api.get(f"/v1/jobs/{job['id']}/events").json()["events"]
    assert [e["phase"] for e in events] == ["queued"]
    arts = api.get(f"/v1/jobs/{job['id']}/artifacts").json()
    assert arts == {"job_id": job["id"], "published": False, "manifest_key": None, "artifacts": []}
    assert api.get("/v1/jobs/nope").status_code == 404


def test_jobs_survive_an_api_restart(api_settings):
    auth = {"Authorization": f"Bearer {api_settings.bootstrap_admin_key.get_secret_value()}"}
    with TestClient(create_app(api_settings), headers=auth) as first:
        job_id = submit(first).json()["id"]
    with TestClient(create_app(api_settings), headers=auth) as second:
        assert second.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"


def test_openapi_docs(api):
    assert api.get("/docs").status_code == 200
    schema = api.get("/openapi.json").json()
    assert "/v1/jobs" in schema["paths"] and "/v1/jobs/{job_id}/cancel" in schema["paths"]


def test_metrics_follow_prometheus_naming(api):
    submit(api)
    text = api.get("/metrics").text
    assert 'saeq_jobs_submitted_total{kind="harvest"} 1.0' in text
    assert 'saeq_jobs{kind="harvest",state="queued"} 1.0' in text
    assert 'saeq_queue_depth{queue="gpu"} 1.0' in text
    assert "job_id" not in text
