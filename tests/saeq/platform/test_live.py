"""saeq.platform.live on a real Redis: teams are served in turn, a slot of an API that died expires, the rate
window tells when to retry, and a cancelled request leaves its queue."""

from __future__ import annotations

import time

import pytest
import redis

from saeq.errors import Cancelled
from saeq.platform.live import LiveRequests
from saeq.platform.teams import TeamQuota

DB = 14


@pytest.fixture
def live(redis_srv) -> LiveRequests:
    client = redis.Redis.from_url(f"{redis_srv.url.rsplit('/', 1)[0]}/{DB}", decode_responses=True)
    client.flushdb()
    return LiveRequests(client)


def _entry(team: str, n: int) -> dict:
    return {
        "id": f"{team}{n}",
        "team": team,
        "op": "steer",
        "payload": {},
        "max_prompt_tokens": 8,
        "deadline": time.time() + 60,
    }


def test_teams_are_served_in_turn_however_many_each_queued(live):
    for team, n in [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("c", 1), ("b", 2)]:
        live.enqueue(team, _entry(team, n), ttl_s=60)
    order = []
    while (entry := live.next_request()) is not None:
        order.append(entry["id"])
    assert order == ["a1", "b1", "c1", "a2", "b2", "a3"]


def test_a_team_that_starts_waiting_goes_before_the_team_just_served(live):
    for n in (1, 2, 3):
        live.enqueue("a", _entry("a", n), ttl_s=60)
    assert live.next_request()["id"] == "a1"  # a worker computes a1; a2 and a3 wait
    live.enqueue("b", _entry("b", 1), ttl_s=60)
    assert [live.next_request()["id"] for _ in range(3)] == ["b1", "a2", "a3"]
    assert live.next_request() is None


def test_a_slot_held_by_an_api_that_died_expires(live):
    quota = TeamQuota(live_concurrency=1, live_per_minute=100)
    assert live.admit("lab", "r1", quota, hold_s=1.0) is None  # never released: its API died
    refused = live.admit("lab", "r2", quota, hold_s=1.0)
    assert refused is not None and refused.limit == "live_concurrency" and refused.retry_after_s == 1
    assert live.admit("other", "r3", quota, hold_s=1.0) is None  # another team's slots are its own
    time.sleep(1.2)
    assert live.admit("lab", "r4", quota, hold_s=1.0) is None


def test_the_rate_window_counts_admitted_requests_only_and_says_when_to_retry(live):
    quota = TeamQuota(live_concurrency=1, live_per_minute=2)
    assert live.admit("lab", "r1", quota, hold_s=30) is None
    assert live.admit("lab", "r2", quota, hold_s=30).limit == "live_concurrency"  # takes no place
    live.release("lab", "r1")
    assert live.admit("lab", "r3", quota, hold_s=30) is None
    live.release("lab", "r3")
    refused = live.admit("lab", "r4", quota, hold_s=30)
    assert refused.limit == "live_per_minute" and 58 <= refused.retry_after_s <= 60


def test_a_cancelled_request_leaves_its_queue_or_stops_its_worker(live):
    queued = live.enqueue("lab", _entry("lab", 1), ttl_s=60)
    live.cancel("lab", "lab1", queued, "steer")
    assert live.next_request() is None and live.outcomes() == {"steer|withdrawn": 1}

    taken = live.enqueue("lab", _entry("lab", 2), ttl_s=60)
    entry = live.next_request()
    check = live.check_for(entry, every_s=0)
    check()  # not cancelled: returns
    live.cancel("lab", "lab2", taken, "steer")  # a worker has it: only the flag
    with pytest.raises(Cancelled, match="gave up"):
        check()
    assert live.cancelled(entry) and live.outcomes() == {"steer|withdrawn": 1}
