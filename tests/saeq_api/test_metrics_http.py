"""The API's HTTP request metrics: each request counted under its route template, on /metrics."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families


@pytest.fixture
def api_settings(api_settings):
    """Every scrape fresh: the test reads the histogram right after the requests."""
    return api_settings.model_copy(update={"metrics_cache_s": 0.0})


def test_a_request_is_timed_under_its_route_template(api):
    job = api.post("/v1/jobs", json={"spec": {"kind": "harvest"}}).json()
    assert api.get(f"/v1/jobs/{job['id']}").status_code == 200
    samples = [
        s
        for f in text_string_to_metric_families(api.get("/metrics").text)
        for s in f.samples
        if s.name == "http_request_duration_seconds_count"
    ]
    handlers = {s.labels["handler"] for s in samples}
    assert any("{" in h and h.startswith("/v1/jobs/") for h in handlers), handlers  # the template
    assert not any(job["id"] in h for h in handlers)  # never the raw path
    assert "/v1/jobs" in handlers
