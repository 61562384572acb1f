"""Teams as their users see them, on real Redis and S3 (no worker: jobs stay queued): API keys,
isolation between teams, quotas and priorities."""

from __future__ import annotations

import io

import redis

HARVEST = {"kind": "harvest", "max_tokens": 4096}


def submit(api, headers, spec=HARVEST, **body):
    return api.post("/v1/jobs", json={"spec": spec, **body}, headers=headers)


def test_requests_without_a_valid_key_are_refused(api, api_settings):
    anonymous = {"Authorization": ""}
    r = api.get("/v1/jobs", headers=anonymous)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in r.json()["detail"]
    for bad in ("Bearer saeq_0123456789abcdef_" + "x" * 43, "Bearer nonsense", "Basic dXNlcjpwdw=="):
        assert api.get("/v1/jobs", headers={"Authorization": bad}).status_code == 401
    assert api.post("/v1/jobs", json={"spec": HARVEST}, headers=anonymous).status_code == 401
    assert api.get("/healthz", headers=anonymous).status_code == 200  # probes and scrapes need no key
    assert api.get("/metrics", headers=anonymous).status_code == 200


def test_keys_are_stored_hashed_and_revocable(api, api_settings):
    created = api.post("/v1/admin/keys", json={"team": "alpha", "name": "ann"}).json()
    key = created["key"]
    member = {"Authorization": f"Bearer {key}"}
    assert api.get("/v1/me", headers=member).json()["team"] == "alpha"
    stored = redis.Redis.from_url(api_settings.redis_url)
    dump = b"".join(str(stored.dump(k)).encode() for k in stored.keys("*"))
    assert key.encode() not in dump and key.split("_")[2].encode() not in dump
    listed = api.get("/v1/admin/keys", params={"team": "alpha"}).json()
    assert [k["key_id"] for k in listed] == [created["key_id"]] and "key" not in listed[0]
    assert api.delete(f"/v1/admin/keys/{created['key_id']}").json()["revoked_at"] is not None
    assert api.get("/v1/me", headers=member).status_code == 401


def test_members_cannot_manage_keys_or_quotas(api):
    member = api.key_for("alpha")
    assert api.post("/v1/admin/keys", json={"team": "alpha", "role": "admin"}, headers=member).status_code == 403
    assert api.get("/v1/admin/teams", headers=member).status_code == 403
    r = api.put("/v1/admin/teams/alpha/quota", json={"max_running": 100}, headers=member)
    assert r.status_code == 403 and "admin" in r.json()["detail"]


def test_a_team_cannot_see_or_touch_another_teams_jobs(api):
    a, b = api.key_for("team-a"), api.key_for("team-b")
    theirs = submit(api, b).json()
    ours = submit(api, a).json()
    assert ours["team"] == "team-a" and theirs["team"] == "team-b"
    assert [j["id"] for j in api.get("/v1/jobs", headers=a).json()["jobs"]] == [ours["id"]]
    for method, path in [("GET", ""), ("GET", "/events"), ("GET", "/artifacts"), ("POST", "/cancel")]:
        r = api.request(method, f"/v1/jobs/{theirs['id']}{path}", headers=a)
        assert r.status_code == 404 and r.json()["detail"] == f"no job {theirs['id']!r}"  # as if it did not exist
    assert api.get(f"/v1/jobs/{theirs['id']}", headers=b).json()["state"] == "queued"  # not cancelled
    r = submit(api, a, depends_on=[theirs["id"]])
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "depends_on.0"
    train = {"kind": "train", "activations": {"job_id": theirs["id"], "hook": "blocks.14.hook_resid_post"}}
    r = submit(api, a, spec=train, depends_on=[])
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "spec.activations.job_id"
    r = api.get("/v1/jobs", params={"team": "team-b"}, headers=a)
    assert r.status_code == 403
    # An admin sees both teams, and can filter by one.
    assert {j["id"] for j in api.get("/v1/jobs").json()["jobs"]} >= {ours["id"], theirs["id"]}
    assert [j["id"] for j in api.get("/v1/jobs", params={"team": "team-b"}).json()["jobs"]] == [theirs["id"]]


def test_a_team_cannot_harvest_another_teams_upload(api):
    a, b = api.key_for("team-a"), api.key_for("team-b")
    up = api.post(
        "/v1/uploads", files={"file": ("c.txt", io.BytesIO(b"one doc\n\nanother doc\n"), "text/plain")}, headers=b
    ).json()
    spec = {"kind": "harvest", "max_tokens": 4096, "corpus": {"source": "upload", "upload_id": up["upload_id"]}}
    r = submit(api, a, spec=spec)
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "spec.corpus.upload_id"
    assert submit(api, b, spec=spec).status_code == 201


def test_a_team_cannot_browse_or_steer_with_another_teams_saes(api):
    a, b = api.key_for("team-a"), api.key_for("team-b")
    theirs = submit(api, b).json()
    assert api.get("/v1/browser/saes", headers=a).json() == {"saes": []}
    assert api.get(f"/v1/browser/labels/{theirs['id']}/features", headers=a).status_code == 404
    r = api.post(
        "/v1/steer",
        json={"sae": {"job_id": theirs["id"]}, "prompt": "hi", "interventions": [{"feature": 0, "value": 1.0}]},
        headers=a,
    )
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "sae.job_id"
    r = api.post("/v1/labels/search", json={"label_job": theirs["id"], "query": "x"}, headers=a)
    assert r.status_code == 422 and "no job" in r.json()["detail"][0]["msg"]


def test_jobs_beyond_the_per_job_quota_are_refused_with_the_reason(api):
    a = api.key_for("small")
    assert (
        api.put(
            "/v1/admin/teams/small/quota", json={"max_tokens": 10_000, "max_latents": 1000, "max_time_s": 60}
        ).status_code
        == 200
    )
    r = submit(api, a, spec={"kind": "harvest", "max_tokens": 20_000})
    assert r.status_code == 403
    detail = r.json()["detail"][0]
    assert detail["field"] == "spec.max_tokens" and "max_tokens=10,000" in detail["msg"]
    r = submit(api, a, time_limit_s=120)
    assert r.status_code == 403 and r.json()["detail"][0]["field"] == "time_limit_s"
    harvest = submit(api, a).json()
    wide = {
        "kind": "train",
        "activations": {"job_id": harvest["id"], "hook": "blocks.14.hook_resid_post"},
        "total_tokens": 8192,
    }
    r = submit(api, a, spec=wide, depends_on=[harvest["id"]])  # 8 x 576 latents, before the harvest ends
    assert r.status_code == 403 and r.json()["detail"][0]["field"] == "spec.saes.0.expansion_factor"
    assert "4,608 latents" in r.json()["detail"][0]["msg"]
    job = submit(api, a, time_limit_s=30).json()
    assert job["time_limit_s"] == 30 and harvest["time_limit_s"] == 60  # the quota's, when none is asked


def test_too_many_waiting_jobs_get_429(api):
    a = api.key_for("busy")
    api.put("/v1/admin/teams/busy/quota", json={"max_running": 1, "max_queued": 2})
    ids = [submit(api, a).json()["id"] for _ in range(3)]  # one dispatched, two waiting
    r = submit(api, a)
    assert r.status_code == 429 and "max_queued=2" in r.json()["detail"] and r.headers["retry-after"]
    api.post(f"/v1/jobs/{ids[1]}/cancel", headers=a)
    assert submit(api, a).status_code == 201  # room again
    assert submit(api, api.key_for("other")).status_code == 201  # another team is unaffected


def test_a_team_runs_max_running_jobs_at_once_highest_priority_first(api):
    a = api.key_for("prio")
    api.put("/v1/admin/teams/prio/quota", json={"max_running": 1})
    first = submit(api, a).json()
    low, high, mid = (submit(api, a, priority=p).json() for p in (1, 9, 5))
    get = lambda job: api.get(f"/v1/jobs/{job['id']}", headers=a).json()
    assert get(first)["dispatched"] and not any(get(j)["dispatched"] for j in (low, high, mid))
    assert api.get("/v1/me", headers=a).json() | {"quota": None, "share": None} == {
        "team": "prio",
        "role": "member",
        "key_id": api.get("/v1/me", headers=a).json()["key_id"],
        "quota": None,
        "active": 1,
        "waiting": 3,
        "stored": 4,
        "share": None,
    }
    api.post(f"/v1/jobs/{first['id']}/cancel", headers=a)  # its slot goes to the highest priority
    assert get(high)["dispatched"] and not get(mid)["dispatched"] and not get(low)["dispatched"]
    api.post(f"/v1/jobs/{high['id']}/cancel", headers=a)
    assert get(mid)["dispatched"] and not get(low)["dispatched"]
    r = api.put("/v1/admin/teams/prio/quota", json={"max_running": 5})  # a larger quota starts the rest
    assert r.json()["active"] == 2 and get(low)["dispatched"]
