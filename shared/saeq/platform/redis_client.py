"""The Redis client saeq's registry uses: calls ride out an unreachable Redis (a restart, a
failover) for a bounded time, through saeq's one retry policy (saeq.retry)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from saeq.retry import retrying

T = TypeVar("T")

REDIS_RETRY_S = 25.0
"""How long a registry call rides out an unreachable Redis (a restart, a failover) before it
raises: long enough for a restart replaying its AOF, short enough that a request still answers."""


class RetryFor(Retry):
    """redis-py's Retry bounded by time instead of by count: saeq's retry policy (saeq.retry;
    backoff 50 ms doubling to 1 s) on connection errors and timeouts until `seconds` have passed.
    A WATCH broken by a reconnect raises WatchError, so every compare-and-set simply runs again."""

    def __init__(self, seconds: float = REDIS_RETRY_S):
        super().__init__(ExponentialBackoff(cap=1.0, base=0.025), retries=1 << 20)
        self.seconds = seconds

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[[Exception], Any] | Callable[[Exception, int], Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        def transient(error: BaseException) -> bool:
            return isinstance(error, self._supported_errors) and (is_retryable is None or is_retryable(error))

        def failed(error: BaseException, failures: int) -> None:
            assert isinstance(error, Exception)  # only the supported errors are retried
            # redis-py's handler drops the broken connection; it takes the count when asked to.
            if with_failure_count:
                cast(Callable[[Exception, int], Any], fail)(error, failures)
            else:
                cast(Callable[[Exception], Any], fail)(error)

        return retrying(
            "Redis call",
            deadline_s=self.seconds,
            is_transient=transient,
            first_delay_s=0.05,
            max_delay_s=1.0,
            on_failure=failed,
        )(do)


def connect(url: str, *, retry_s: float = REDIS_RETRY_S) -> redis.Redis:
    """A client of `url` that decodes replies to str and retries for `retry_s` while Redis is
    unreachable."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        health_check_interval=30,
        retry=RetryFor(retry_s),
        socket_connect_timeout=5,
        socket_keepalive=True,
    )
