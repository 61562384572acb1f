"""Small helpers several test modules share: waiting on a condition, dropping root for a while,
importing a peer library."""

from __future__ import annotations

import contextlib
import importlib
import os
import time
from types import ModuleType

import pytest


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


def import_peer(module: str) -> ModuleType:
    """A peer library whose own loaders check saeq's files (sae_lens, sparsify). Missing, its test
    is skipped on a developer's machine but fails in CI (CI=true), so CI never passes without it."""
    if os.environ.get("CI") == "true":
        return importlib.import_module(module)
    return pytest.importorskip(module)
