"""REST details a client relies on: the Location of a new job."""

from __future__ import annotations

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
