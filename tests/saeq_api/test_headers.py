"""The web surface: security headers on every answer, API docs without third-party scripts,
and /metrics (cached between scrapes, behind a token when one is set)."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from saeq_api.main import create_app


@pytest.mark.parametrize(
    "path", ["/browse", "/browse/static/browser.js", "/healthz", "/v1/jobs", "/docs", "/openapi.json", "/no-such-page"]
)
def test_security_headers_on_every_answer(api, path):
    r = api.get(path, headers={"Authorization": ""} if path == "/v1/jobs" else {})  # a 401 too
    h = r.headers
    assert h["x-content-type-options"] == "nosniff"
    assert h["x-frame-options"] == "DENY"
    assert h["referrer-policy"] == "no-referrer"
    csp = dict(d.strip().split(" ", 1) for d in h["content-security-policy"].split(";") if d.strip())
    assert csp["default-src"] == "'self'" and csp["frame-ancestors"] == "'none'"
    assert csp["script-src"] == "'self'" and csp["object-src"] == "'none'"  # no inline or remote scripts


def test_docs_load_nothing_from_another_origin(api):
    page = api.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert refs and all(ref.startswith("/") and not ref.startswith("//") for ref in refs), refs
    assert "<script>" not in page.text  # no inline script: the CSP forbids it
    for ref in refs:
        asset = api.get(ref)
        assert asset.status_code == 200, ref
    assert api.get("/redoc").status_code == 404  # ReDoc would come from a CDN
    assert api.get("/openapi.json").json()["info"]["title"] == "saeq"


def _jobs_gauge(text: str, team: str) -> float:
    m = re.search(rf'saeq_team_jobs{{state="queued",team="{team}"}} (\S+)', text)
    return float(m.group(1)) if m else 0.0


def _hmget_calls(api) -> int:
    stats = api.app.state.services.registry.r.info("commandstats")
    return int(stats.get("cmdstat_hmget", {}).get("calls", 0))


def test_metrics_scrapes_are_cached(api):
    for _ in range(20):
        assert api.post("/v1/jobs", json={"spec": {"kind": "harvest"}}).status_code == 201
    first = api.get("/metrics").text
    assert _jobs_gauge(first, "admin") == 20
    before = _hmget_calls(api)
    for _ in range(30):  # a scraper in a loop
        assert api.get("/metrics").status_code == 200
    assert _hmget_calls(api) - before < 20  # not one read per job per scrape


@pytest.fixture
def token_api(api_settings):
    settings = api_settings.model_copy(update={"metrics_token": SecretStr("scrape-secret-0123456789")})
    with TestClient(create_app(settings)) as c:
        yield c


def test_metrics_token_is_required_when_set(token_api):
    r = token_api.get("/metrics")
    assert r.status_code == 401 and "SAEQ_METRICS_TOKEN" in r.json()["detail"]
    assert r.headers["content-type"] == "application/problem+json" and r.json()["title"] == "Unauthorized"
    assert token_api.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = token_api.get("/metrics", headers={"Authorization": "Bearer scrape-secret-0123456789"})
    assert ok.status_code == 200 and "saeq_queue_depth" in ok.text
