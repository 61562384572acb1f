"""REST details a client relies on: the Location of a new job."""

from __future__ import annotations

from types import SimpleNamespace

from saeq.client.client import Client

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


def test_events_page_past_500_and_the_client_follows(api):
    job_id = api.post("/v1/jobs", json={"spec": HARVEST}).json()["id"]
    registry = api.app.state.services.registry
    for i in range(620):  # after the "queued" event: 621 in all
        registry.event(job_id, "running", f"step {i}")
    first = api.get(f"/v1/jobs/{job_id}/events")
    page = first.json()
    assert len(page["events"]) == 500 and page["more"] is True
    assert page["next_after"] == page["events"][-1]["id"] and 'rel="next"' in first.headers["link"]
    rest = api.get(f"/v1/jobs/{job_id}/events", params={"after": page["next_after"]}).json()
    assert len(rest["events"]) == 121 and rest["more"] is False and rest["events"][-1]["message"] == "step 619"
    assert api.get(f"/v1/jobs/{job_id}/events", params={"after": rest["next_after"]}).json() == {
        "events": [],
        "more": False,
        "next_after": rest["next_after"],
    }
    client = Client("http://testserver", api_key="unused")
    client.http = api  # the TestClient is an httpx.Client on the app
    events = client.events(job_id)
    assert len(events) == 621 and len({e["id"] for e in events}) == 621
    assert [e["message"] for e in events[1:]] == [f"step {i}" for i in range(620)]
