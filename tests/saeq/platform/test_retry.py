"""saeq.retry, the one retry policy, and the Redis client's RetryFor built on it."""

from __future__ import annotations

import time

import pytest
import redis

from saeq.platform.registry import RetryFor
from saeq.retry import backoff_s, retrying


class Flaky:
    """Fails with `error` the first `failures` calls, then returns "ok"."""

    def __init__(self, failures: int, error: BaseException):
        self.failures, self.error, self.calls = failures, error, 0

    def __call__(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        return "ok"


def fast(**kw):
    return retrying("test call", is_transient=lambda e: isinstance(e, ConnectionError), first_delay_s=0.001, **kw)


def test_transient_failures_are_retried_until_success():
    call = Flaky(3, ConnectionError("refused"))
    rewinds = []
    assert fast(deadline_s=5.0, before_retry=lambda: rewinds.append(1))(call) == "ok"
    assert call.calls == 4 and len(rewinds) == 3


def test_other_errors_go_straight_up():
    call = Flaky(3, ValueError("bad request"))
    with pytest.raises(ValueError):
        fast(deadline_s=5.0)(call)
    assert call.calls == 1


def test_past_the_deadline_the_last_error_or_give_up_is_raised():
    call = Flaky(10**6, ConnectionError("refused"))
    start = time.monotonic()
    with pytest.raises(ConnectionError):
        fast(deadline_s=0.2)(call)
    assert 0.2 <= time.monotonic() - start < 2.0 and call.calls > 1

    def give_up(error, state):
        raise RuntimeError(f"gave up after {state.attempt_number}: {error}")

    with pytest.raises(RuntimeError, match="gave up after 1: refused"):
        fast(deadline_s=5.0, once=True, give_up=give_up)(Flaky(1, ConnectionError("refused")))


def test_on_failure_sees_every_transient_failure():
    seen = []
    fast(deadline_s=5.0, on_failure=lambda e, n: seen.append(n))(Flaky(2, ConnectionError("x")))
    assert seen == [1, 2]


def test_backoff_doubles_to_its_cap_with_equal_jitter():
    assert [backoff_s(n, first_delay_s=0.2, max_delay_s=5.0, jitter=False) for n in (1, 2, 3, 6)] == [
        0.2,
        0.4,
        0.8,
        5.0,
    ]
    for _ in range(100):
        assert 0.1 <= backoff_s(1, first_delay_s=0.2, max_delay_s=5.0) <= 0.2


def test_redis_retry_for_rides_out_connection_errors_and_drops_the_connection():
    fails = []
    call = Flaky(2, redis.ConnectionError("down"))
    assert RetryFor(5.0).call_with_retry(call, fails.append) == "ok"
    assert len(fails) == 2
    with pytest.raises(redis.ConnectionError):
        RetryFor(0.1).call_with_retry(Flaky(10**6, redis.ConnectionError("down")), lambda e: None)
    with pytest.raises(redis.ResponseError):
        RetryFor(5.0).call_with_retry(Flaky(1, redis.ResponseError("WRONGTYPE")), lambda e: None)
