"""What a /metrics scrape costs Redis: the same number of commands (those its scripts run included)
with 200 stored jobs as with 2,000, where reading every record (the census) costs one per job."""

from __future__ import annotations

import pytest
import redis
from prometheus_client import generate_latest

from saeq.platform.registry import Registry
from saeq.platform.teams import TeamQuota
from saeq_api.metrics import make_registry

DB = 9
"""A database of its own, flushed first."""


@pytest.fixture
def registry(redis_srv) -> Registry:
    client = redis.Redis.from_url(f"{redis_srv.url.rsplit('/', 1)[0]}/{DB}", decode_responses=True)
    client.flushdb()
    reg = Registry(client, lease_ttl_s=30)
    for team in ("lab", "ops"):
        reg.teams.set_quota(team, TeamQuota(max_running=1, max_queued=10_000))
    return reg


def commands(r: redis.Redis) -> int:
    """Commands the server ran so far, every client's and script's."""
    return sum(int(v["calls"]) for v in r.info("commandstats").values())


def store_jobs(registry: Registry, n: int) -> None:
    """n jobs of two teams and kinds: three in four cancelled (stored until their retention ends),
    the rest queued behind a dependency, so the open work (what the queue gauges read) stays put."""
    hold, _ = registry.create(kind="harvest", spec={}, queue="gpu", depends_on=[], team="lab")
    for i in range(n):
        job, _ = registry.create(
            kind=("train", "label")[i % 2], spec={}, queue="gpu", depends_on=[hold["id"]], team=("lab", "ops")[i % 2]
        )
        if i % 4:
            registry.request_cancel(job["id"])


def scrape_commands(registry: Registry) -> int:
    exposition = make_registry(registry)
    generate_latest(exposition)  # warm: the team quotas' cache, and the counters' first recount
    before = commands(registry.r)
    text = generate_latest(exposition).decode()
    assert "saeq_jobs{" in text and "saeq_team_jobs{" in text and "saeq_queue_oldest_wait_seconds{" in text
    return commands(registry.r) - before


def test_a_scrape_costs_the_same_with_ten_times_the_jobs(registry):
    sent, _ = registry.create(kind="harvest", spec={}, queue="gpu", depends_on=[], team="ops")
    assert registry.ready_to_dispatch(sent["id"])[0]  # one job waits for a worker: the oldest wait
    store_jobs(registry, 200)
    small = scrape_commands(registry)
    store_jobs(registry, 1800)
    big = scrape_commands(registry)
    assert abs(big - small) <= 5, (small, big)
    counts = registry.job_counts()
    assert counts.by_team[("ops", "cancelled")] + counts.by_team[("lab", "cancelled")] == 1500
    before = commands(registry.r)
    registry.census()  # the reference: one read per stored job
    assert commands(registry.r) - before > 2000 > 10 * big
