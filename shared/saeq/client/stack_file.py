"""The file where `saeq up` leaves the running local stack's address and admin key.

The local stack (saeq.dev.local_stack) writes it; the client reads it to find that stack with no
configuration. It lives here so the client needs nothing of saeq.dev (or Redis) to read it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def saeq_home() -> Path:
    return Path(os.environ.get("SAEQ_HOME", Path.home() / ".saeq"))


def _stack_info() -> dict:
    try:
        info = json.loads(stack_info_path().read_text())
    except (OSError, ValueError):
        return {}
    return info if _alive(info.get("api_pid", -1)) else {}


def read_stack_url() -> str | None:
    return _stack_info().get("url")


def stack_info_path(home: Path | None = None) -> Path:
    """The file that holds the running stack's address and secrets (mode 0600)."""
    return (home or saeq_home()) / "stack.json"


def read_stack_key(url: str) -> str | None:
    """The admin key of the running local stack at `url` (stack.json is readable by its owner only)."""
    info = _stack_info()
    return info.get("api_key") if info.get("url", "").rstrip("/") == url.rstrip("/") else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except (OSError, TypeError):
        return False
