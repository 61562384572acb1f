"""Small helpers several test modules share: waiting on a condition, dropping root for a while."""

from __future__ import annotations

import contextlib
import os
import time


def wait_for(predicate, timeout: float, what: str):
    """The first truthy value of `predicate()`, polled every 0.1 s; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def unprivileged():
    """Run as `nobody` meanwhile, where the tests run as root (which writes anywhere)."""
    if os.geteuid() != 0:
        yield
        return
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
