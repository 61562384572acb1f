"""REST details a client relies on: the Location of a new job."""

from __future__ import annotations

from types import SimpleNamespace

HARVEST = {"kind": "harvest", "max_tokens": 4096}


def test_submit_answers_the_jobs_location(api):
    r = api.post("/v1/jobs", json={"spec": HARVEST}, headers={"Idempotency-Key": "k1"})
    assert r.status_code == 201 and r.headers["location"] == f"/v1/jobs/{r.json()['id']}"
    assert api.get(r.headers["location"]).json()["id"] == r.json()["id"]
    again = api.post("/v1/jobs", json={"spec": HARVEST}, headers={"Idempotency-Key": "k1"})
    assert again.status_code == 200 and again.headers["location"] == r.headers["location"]
    assert "location" not in api.post("/v1/jobs", params={"dry_run": True}, json={"spec": HARVEST}).headers
    op = api.get("/openapi.json").json()["paths"]["/v1/jobs"]["post"]
    assert "Location" in op["responses"]["201"]["headers"]


def test_pages_never_skip_jobs_sharing_a_created_at(api, monkeypatch):
    from saeq.platform import job_submit

    # Five jobs created in one instant (the registry's clock stands still), then two later ones.
    monkeypatch.setattr(job_submit, "time", SimpleNamespace(time=lambda: 1_800_000_000.25))
    tied = {api.post("/v1/jobs", json={"spec": HARVEST}).json()["id"] for _ in range(5)}
    monkeypatch.setattr(job_submit, "time", SimpleNamespace(time=lambda: 1_800_000_001.5))
    later = {api.post("/v1/jobs", json={"spec": HARVEST}).json()["id"] for _ in range(2)}
    seen, before = [], None
    for _ in range(10):
        page = api.get("/v1/jobs", params={"limit": 2, **({"before": before} if before else {})}).json()
        seen += [j["id"] for j in page["jobs"]]
        if (before := page["next_before"]) is None:
            break
    assert sorted(seen) == sorted(tied | later) and len(seen) == 7
    assert set(seen[:2]) == later  # newest first
    # The old cursor, a bare created_at, still pages: everything older than it.
    old = api.get("/v1/jobs", params={"before": "1800000001.5"}).json()
    assert {j["id"] for j in old["jobs"]} == tied
    assert api.get("/v1/jobs", params={"before": "1e999"}).status_code == 422
    assert api.get("/v1/jobs", params={"before": "soon"}).status_code == 422
