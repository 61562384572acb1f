"""The OpenAPI declares the bearer key, so /docs has an Authorize button and generated clients send it."""

from __future__ import annotations

from fastapi.testclient import TestClient

from saeq_api.main import create_app


def _operations(api):
    doc = api.get("/openapi.json").json()
    return doc, {(m.upper(), p): op for p, ops in doc["paths"].items() for m, op in ops.items()}


def test_protected_operations_reference_the_bearer_scheme(api):
    doc, ops = _operations(api)
    schemes = doc["components"]["securitySchemes"]
    (name,) = [n for n, s in schemes.items() if s == {**s, "type": "http", "scheme": "bearer"}]
    for key in [("POST", "/v1/jobs"), ("GET", "/v1/jobs"), ("GET", "/v1/jobs/{job_id}"), ("GET", "/v1/me")]:
        assert {name: []} in ops[key].get("security", []), key
    for key in [("GET", "/healthz"), ("GET", "/readyz")]:
        assert "security" not in ops[key], key
    assert not any(p.startswith("/browse") for p in doc["paths"])  # the browser's pages stay out of the schema


def test_missing_key_keeps_its_401_and_challenge(api_settings):
    with TestClient(create_app(api_settings)) as anon:
        for headers in [{}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer nope"}]:
            r = anon.get("/v1/jobs", headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", headers
            assert "Authorization: Bearer <key>" in r.json()["detail"]
        key = api_settings.bootstrap_admin_key.get_secret_value()
        assert anon.get("/v1/jobs", headers={"Authorization": f"bearer {key}"}).status_code == 200
