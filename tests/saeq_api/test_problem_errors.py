"""Every error answer is an RFC 9457 problem (application/problem+json) that keeps `detail`."""

from __future__ import annotations

import secrets

from fastapi.testclient import TestClient

from saeq.client.client import ApiError, Client
from saeq.platform.teams import new_key
from saeq_api.main import create_app
from saeq_api.settings import ApiSettings
from tests.servers import redis_server

HARVEST = {"kind": "harvest", "max_tokens": 4096}


def _problem(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    body = resp.json()
    assert body["status"] == status and body["type"] == "about:blank" and body["title"]
    assert body["detail"] and body["instance"] == resp.request.url.path
    return body


def test_401_404_422_429_are_problems(api, api_settings):
    with TestClient(create_app(api_settings)) as anon:
        body = _problem(anon.get("/v1/jobs"), 401)
        assert body["title"] == "Unauthorized" and "Authorization: Bearer <key>" in body["detail"]
    assert _problem(api.get("/v1/jobs/nope"), 404)["detail"] == "no job 'nope'"
    _problem(api.get("/v1/no-such-route"), 404)
    body = _problem(api.post("/v1/jobs", json={"spec": {**HARVEST, "max_tokens": -5}}), 422)
    assert [e["field"] for e in body["detail"]] == ["spec.max_tokens"] and body["errors"] == body["detail"]
    body = _problem(api.get("/v1/jobs/x/events", params={"after": f"{2**64}-0"}), 422)
    assert body["errors"][0]["field"] == "query.after"
    busy = api.key_for("busy")
    api.put("/v1/admin/teams/busy/quota", json={"max_running": 1, "max_queued": 1})
    for _ in range(2):
        api.post("/v1/jobs", json={"spec": HARVEST}, headers=busy)
    resp = api.post("/v1/jobs", json={"spec": HARVEST}, headers=busy)
    assert "max_queued=1" in _problem(resp, 429)["detail"] and resp.headers["retry-after"]
    # The Python client still reads `detail` from a problem body.
    client = Client("http://testserver", api_key="unused")
    client.http = api
    try:
        client.get("nope")
    except ApiError as e:
        assert e.status == 404 and "no job 'nope'" in str(e)
    else:
        raise AssertionError("no ApiError")
    responses = api.get("/openapi.json").json()["paths"]["/v1/jobs"]["post"]["responses"]
    assert "application/problem+json" in responses["404"]["content"]
    assert list(responses["422"]["content"]) == ["application/problem+json"]  # not FastAPI's own 422


def test_redis_down_is_a_503_problem(s3_srv):
    key = new_key()[1]
    with redis_server() as srv:
        settings = ApiSettings(
            redis_url=srv.url,
            redis_retry_s=1,
            store=f"s3://{s3_srv.bucket}",
            s3_endpoint=s3_srv.endpoint,
            s3_access_key=s3_srv.access_key,
            s3_secret_key=s3_srv.secret_key,
            bootstrap_admin_key=key,
            signing_key=secrets.token_hex(32),
        )
        with TestClient(create_app(settings), headers={"Authorization": f"Bearer {key}"}) as api:
            srv.stop()
            resp = api.get("/v1/jobs")
            assert "Redis" in _problem(resp, 503)["detail"] and resp.headers["retry-after"] == "5"
            srv.start()
