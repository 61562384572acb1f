"""Worker ads on a real Redis: live ones count, expired and withdrawn ones stop counting, and a
queue no worker advertises is not gated (None)."""

from __future__ import annotations

import time

import pytest
import redis

from saeq.platform import pools, redis_keys
from saeq.specs.scheduling import WorkerAd

DB = 12


@pytest.fixture
def r(redis_srv) -> redis.Redis:
    client = redis.Redis.from_url(f"{redis_srv.url.rsplit('/', 1)[0]}/{DB}", decode_responses=True)
    client.flushdb()
    return client


def _ad(worker: str, queue: str = "gpu", *, memory_gib: int = 24, slots: int = 1, count: int = 1) -> WorkerAd:
    return WorkerAd(
        worker=worker,
        queue=queue,
        device="cuda",
        device_name="test card",
        memory_bytes=memory_gib << 30,
        count=count,
        slots=slots,
        updated_at=time.time(),
    )


def test_no_ads_means_no_gate(r):
    assert pools.live_workers(r) == []
    assert pools.capacity(r, "gpu") is None
    assert pools.largest_memory(r, "gpu") is None


def test_capacity_and_memory_per_queue(r):
    pools.advertise(r, _ad("a:1", slots=2, memory_gib=24), ttl_s=30)
    pools.advertise(r, _ad("b:2", slots=3, memory_gib=80), ttl_s=30)
    pools.advertise(r, _ad("c:3", "cpu", slots=4, memory_gib=64), ttl_s=30)
    assert pools.capacity(r, "gpu") == 5
    assert pools.capacity(r, "cpu") == 4
    assert pools.capacity(r, "steer") is None
    assert pools.largest_memory(r, "gpu") == 80 << 30
    assert pools.largest_memory(r, "cpu") == 64 << 30
    assert sorted(ad.worker for ad in pools.live_workers(r)) == ["a:1", "b:2", "c:3"]


def test_renewal_replaces_the_ad(r):
    pools.advertise(r, _ad("a:1", slots=2), ttl_s=30)
    pools.advertise(r, _ad("a:1", slots=6), ttl_s=30)
    assert pools.capacity(r, "gpu") == 6
    assert len(pools.live_workers(r)) == 1


def test_expired_ads_stop_counting_and_are_dropped(r):
    pools.advertise(r, _ad("gone:1", slots=2, memory_gib=80), ttl_s=0.2)
    pools.advertise(r, _ad("here:2", slots=1, memory_gib=24), ttl_s=30)
    assert pools.capacity(r, "gpu") == 3
    time.sleep(0.4)
    assert pools.capacity(r, "gpu") == 1
    assert pools.largest_memory(r, "gpu") == 24 << 30
    assert r.hkeys(redis_keys.POOL_ADS) == ["here:2/gpu"]  # the reader cleaned up
    assert r.zcard(redis_keys.POOL_EXPIRY) == 1


def test_withdraw_removes_at_once(r):
    pools.advertise(r, _ad("a:1", slots=2), ttl_s=30)
    pools.advertise(r, _ad("a:1", "cpu", slots=1), ttl_s=30)
    pools.withdraw(r, "a:1", "gpu")
    assert pools.capacity(r, "gpu") is None
    assert pools.capacity(r, "cpu") == 1


def test_a_bad_ttl_is_refused(r):
    with pytest.raises(ValueError, match="ttl_s"):
        pools.advertise(r, _ad("a:1"), ttl_s=0)
