"""Fair-share usage on a real Redis: device-seconds decay by the half-life, adds accumulate on the
decayed value, an attempt's clock counts its devices, and shares/targets follow the weights of the
teams with open jobs."""

from __future__ import annotations

import time

import pytest
import redis

from saeq.platform import fair_share
from saeq.platform.fair_share import SchedulingPolicy, UsageClock
from saeq.platform.registry import Registry
from saeq.platform.teams import TeamQuota

DB = 11
"""A database of its own, flushed first."""


@pytest.fixture
def registry(redis_srv) -> Registry:
    client = redis.Redis.from_url(f"{redis_srv.url.rsplit('/', 1)[0]}/{DB}", decode_responses=True)
    client.flushdb()
    return Registry(client, lease_ttl_s=30)


def test_usage_halves_every_half_life_and_adds_on_the_decayed_value(registry):
    r, t0 = registry.r, 1_000_000.0
    fair_share.add_usage(r, "a", 100.0, now=t0, half_life_s=60)
    assert fair_share.usage_s(r, "a", now=t0 + 60, half_life_s=60) == pytest.approx(50.0)
    assert fair_share.usage_s(r, "a", now=t0 + 120, half_life_s=60) == pytest.approx(25.0)
    assert fair_share.add_usage(r, "a", 10.0, now=t0 + 60, half_life_s=60) == pytest.approx(60.0)
    assert fair_share.usage_s(r, "a", now=t0 + 120, half_life_s=60) == pytest.approx(30.0)
    assert fair_share.usage_s(r, "nobody", now=t0) == 0.0


def test_the_published_half_life_is_the_one_used(registry):
    r = registry.r
    fair_share.publish_policy(r, SchedulingPolicy(half_life_s=1.0, min_run_s=3.0, max_preemptions=2))
    assert fair_share.read_policy(r) == SchedulingPolicy(half_life_s=1.0, min_run_s=3.0, max_preemptions=2)
    now = time.time()
    fair_share.add_usage(r, "a", 8.0, now=now)
    assert fair_share.usage_s(r, "a", now=now + 3.0) == pytest.approx(1.0)


def test_an_attempts_clock_counts_its_devices_and_keeps_an_average_attempt(registry):
    r = registry.r
    clock = UsageClock(r, "a", devices=2)
    time.sleep(0.2)
    clock.tick()
    time.sleep(0.2)
    clock.close()
    used = fair_share.usage_s(r, "a")
    assert 0.75 < used < 1.2  # 0.4 s x 2 devices, decayed by nothing over a day's half-life
    assert clock.total_s == pytest.approx(used, rel=1e-3)
    _, job_s = fair_share.usages(r, ["a"])["a"]
    assert job_s == pytest.approx(clock.total_s)
    fair_share.record_attempt(r, "a", 0.0)
    assert fair_share.usages(r, ["a"])["a"][1] == pytest.approx(clock.total_s * (1 - fair_share.ATTEMPT_WEIGHT))


def test_shares_and_targets_follow_usage_and_the_active_teams_weights(registry):
    registry.teams.set_quota("a", TeamQuota(share_weight=1.0))
    registry.teams.set_quota("b", TeamQuota(share_weight=3.0))
    registry.teams.set_quota("idle", TeamQuota(share_weight=4.0))
    for team in ("a", "b"):
        registry.create(kind="train", spec={}, queue="q", depends_on=[], team=team)
    fair_share.add_usage(registry.r, "a", 30.0)
    fair_share.add_usage(registry.r, "b", 10.0)
    fair_share.add_usage(registry.r, "idle", 60.0)
    shares = fair_share.shares(registry)
    assert shares["a"]["target"] == pytest.approx(0.25) and shares["b"]["target"] == pytest.approx(0.75)
    assert shares["idle"]["target"] == 0.0 and not shares["idle"]["active"]
    assert shares["a"]["share"] == pytest.approx(0.3) and shares["b"]["share"] == pytest.approx(0.1)
    assert shares["a"]["weight"] == 1.0 and shares["a"]["usage_s"] == pytest.approx(30.0, rel=1e-3)
