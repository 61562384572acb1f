"""The API's queue gauges: how long the oldest job has waited, and jobs by team."""

from __future__ import annotations

import time

import pytest
from prometheus_client.parser import text_string_to_metric_families


@pytest.fixture
def api_settings(api_settings):
    """Every scrape fresh: these tests read gauges right after changing them."""
    return api_settings.model_copy(update={"metrics_cache_s": 0.0})


def gauges(api) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(api.get("/metrics").text)
        for s in f.samples
    }


def test_oldest_wait_and_jobs_by_team(api):
    before = gauges(api)
    assert before[("saeq_queue_oldest_wait_seconds", (("queue", "gpu"),))] == 0  # nothing waits
    t0 = time.time()
    first = api.post("/v1/jobs", json={"spec": {"kind": "harvest"}}).json()
    time.sleep(1.2)
    api.post("/v1/jobs", json={"spec": {"kind": "harvest"}, "depends_on": [first["id"]]})
    after = gauges(api)
    waited = after[("saeq_queue_oldest_wait_seconds", (("queue", "gpu"),))]
    assert 1.2 <= waited <= time.time() - t0 + 0.5  # the first job's age: no worker runs here
    assert after[("saeq_queue_oldest_wait_seconds", (("queue", "steer"),))] == 0
    # what KEDA scales the gpu pool to: the first job waits (sent, no worker), the second is held
    assert after[("saeq_queue_waiting_jobs", (("queue", "gpu"),))] == 1
    assert after[("saeq_queue_running_jobs", (("queue", "gpu"),))] == 0
    assert after[("saeq_team_jobs", (("state", "queued"), ("team", "admin")))] == 2  # the admin key's team
