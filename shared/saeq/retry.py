"""saeq's one retry policy, on tenacity: try again through transient failures, with exponential
backoff and equal jitter, until a deadline; then give up. The S3 store, the Redis client and the
HTTP client all retry through `retrying`. Imports only tenacity and the standard library (it sits
with the contracts, below every layer that retries)."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import tenacity
from tenacity import RetryCallState

__all__ = ["RetryCallState", "backoff_s", "describe_error", "retrying"]


def describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def backoff_s(failures: int, *, first_delay_s: float, max_delay_s: float, jitter: bool = True) -> float:
    """The pause after the `failures`-th failure in a row: `first_delay_s` doubling up to
    `max_delay_s`. Equal jitter: half of it fixed, half random, so the processes that lost a
    service together do not all come back in the same instant."""
    delay = min(first_delay_s * 2 ** max(0, failures - 1), max_delay_s)
    return delay / 2 + random.uniform(0, delay / 2) if jitter else delay


def retrying(
    what: str,
    *,
    deadline_s: float,
    is_transient: Callable[[BaseException], bool],
    is_transient_result: Callable[[Any], bool] | None = None,
    first_delay_s: float = 0.05,
    max_delay_s: float = 1.0,
    jitter: bool = True,
    once: bool = False,
    pause_s: Callable[[RetryCallState], float] | None = None,
    on_failure: Callable[[BaseException, int], object] | None = None,
    before_retry: Callable[[], object] | None = None,
    give_up: Callable[[BaseException | None, RetryCallState], NoReturn] | None = None,
    log: logging.Logger | None = None,
    describe: Callable[[BaseException], str] = describe_error,
) -> tenacity.Retrying:
    """A tenacity `Retrying` (call it with the function to run: `retrying(...)(fn, *args)`) that
    runs the call again after each failure `is_transient` accepts (or a result that
    `is_transient_result` accepts) until `deadline_s` has passed since the first try; each pause
    is `backoff_s` (or `pause_s(state)`), never past the deadline. Other errors go straight up.

    `once`: no second try. `on_failure(error, failures)`: after each transient failure, the last
    one included (e.g. drop a broken connection). `before_retry()`: before each try after the
    first (e.g. rewind a stream). `give_up(error, state)`: raises what the caller wants raised
    once the deadline has passed (error is None when the last try returned a transient result);
    without it the last error is raised as it is, or the last result returned. `log`: a warning
    naming `what` at the first failure.
    """
    policy = _Policy(
        what=what,
        deadline_s=deadline_s,
        is_transient=is_transient,
        is_transient_result=is_transient_result,
        first_delay_s=first_delay_s,
        max_delay_s=max_delay_s,
        jitter=jitter,
        once=once,
        pause_s=pause_s,
        on_failure=on_failure,
        before_retry=before_retry,
        give_up=give_up,
        log=log,
        describe=describe,
    )
    return tenacity.Retrying(
        retry=policy.transient,
        stop=policy.stop,
        wait=policy.wait,
        after=policy.after,
        before=policy.before,
        retry_error_callback=policy.exhausted,
    )


@dataclass
class _Policy:
    """What `retrying` configured, as the callbacks tenacity calls with each try's state."""

    what: str
    deadline_s: float
    is_transient: Callable[[BaseException], bool]
    is_transient_result: Callable[[Any], bool] | None
    first_delay_s: float
    max_delay_s: float
    jitter: bool
    once: bool
    pause_s: Callable[[RetryCallState], float] | None
    on_failure: Callable[[BaseException, int], object] | None = None
    before_retry: Callable[[], object] | None = None
    give_up: Callable[[BaseException | None, RetryCallState], NoReturn] | None = None
    log: logging.Logger | None = None
    describe: Callable[[BaseException], str] = describe_error

    def transient(self, state: RetryCallState) -> bool:
        outcome = state.outcome
        if outcome is None:
            return False
        if outcome.failed:
            error = outcome.exception()
            return error is not None and self.is_transient(error)
        return self.is_transient_result is not None and self.is_transient_result(outcome.result())

    def stop(self, state: RetryCallState) -> bool:
        return self.once or (state.seconds_since_start or 0.0) >= self.deadline_s

    def wait(self, state: RetryCallState) -> float:
        if self.pause_s is not None:
            pause = self.pause_s(state)
        else:
            pause = backoff_s(
                state.attempt_number, first_delay_s=self.first_delay_s, max_delay_s=self.max_delay_s, jitter=self.jitter
            )
        return max(0.0, min(pause, self.deadline_s - (state.seconds_since_start or 0.0)))

    def after(self, state: RetryCallState) -> None:
        error = _error_of(state)
        if error is not None and self.on_failure is not None:
            self.on_failure(error, state.attempt_number)
        if error is not None and self.log is not None and state.attempt_number == 1 and not self.stop(state):
            self.log.warning(
                "%s failed (%s); retrying for up to %g s", self.what, self.describe(error), self.deadline_s
            )

    def before(self, state: RetryCallState) -> None:
        if self.before_retry is not None and state.attempt_number > 1:
            self.before_retry()

    def exhausted(self, state: RetryCallState) -> Any:
        error = _error_of(state)
        if self.give_up is not None:
            self.give_up(error, state)
        if error is not None:
            raise error
        assert state.outcome is not None
        return state.outcome.result()


def _error_of(state: RetryCallState) -> BaseException | None:
    outcome = state.outcome
    return outcome.exception() if outcome is not None and outcome.failed else None
