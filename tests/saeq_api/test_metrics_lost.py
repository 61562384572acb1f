"""The API exports the reaper's count of lost attempts, from Redis: saeq_job_attempts_lost_total."""

from __future__ import annotations

import redis
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from saeq.platform import redis_keys
from saeq.platform.registry import Registry
from saeq.platform.teams import TeamQuota
from saeq_api.metrics import make_registry


def test_a_killed_workers_attempt_shows_in_attempts_lost_total(redis_srv):
    client = redis.Redis.from_url(f"{redis_srv.url.rsplit('/', 1)[0]}/13", decode_responses=True)
    client.flushdb()
    registry = Registry(client, lease_ttl_s=30)
    registry.teams.set_quota("lab", TeamQuota(max_running=10))
    created, _ = registry.create(kind="harvest", spec={}, queue="cpu", depends_on=[], team="lab")
    _, dispatch_id = registry.ready_to_dispatch(created["id"])
    assert registry.claim(created["id"], dispatch_id, "worker-a").action == "run"
    client.delete(redis_keys.job_lease(created["id"]))  # killed -9: its lease ran out, unreported
    assert [j["id"] for j, _ in registry.reap()[0]] == [created["id"]]
    lost = {
        s.labels["kind"]: s.value
        for f in text_string_to_metric_families(generate_latest(make_registry(registry)).decode())
        for s in f.samples
        if s.name == "saeq_job_attempts_lost_total"
    }
    assert lost == {"harvest": 1.0}
