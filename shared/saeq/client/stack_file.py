"""The file where `saeq up` leaves the running local stack's address and admin key.

The local stack (saeq.dev.local_stack) writes it; the client reads it to find that stack with no
configuration. It lives here so the client needs nothing of saeq.dev (or Redis) to read it.

`saeq up --home DIR` writes it in DIR, and records DIR in ~/.saeq/current, so that `saeq status`
and `saeq.Client()` on this machine find that stack too, with neither SAEQ_HOME nor --url.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def saeq_home() -> Path:
    return Path(os.environ.get("SAEQ_HOME", Path.home() / ".saeq"))


def current_home_pointer() -> Path:
    """The file naming the home of the stack `saeq up` last started (in ~/.saeq, whatever SAEQ_HOME)."""
    return Path.home() / ".saeq" / "current"


def record_current_home(home: Path) -> None:
    """Make `home`'s stack the one the client finds (after SAEQ_HOME's own, if that one runs)."""
    pointer = current_home_pointer()
    pointer.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    pointer.write_text(str(home.resolve()) + "\n")


def forget_current_home(home: Path) -> None:
    """Remove the pointer if it still names `home` (another `saeq up` may have replaced it)."""
    pointer = current_home_pointer()
    try:
        if pointer.read_text().strip() == str(home.resolve()):
            pointer.unlink()
    except OSError:
        pass


def _candidate_homes() -> list[Path]:
    homes = [saeq_home()]
    try:
        homes.append(Path(current_home_pointer().read_text().strip()))
    except OSError:
        pass
    return homes


def _stack_info() -> dict:
    """The stack file of the first running stack: SAEQ_HOME's (or ~/.saeq's), else the recorded one."""
    for home in _candidate_homes():
        try:
            info = json.loads(stack_info_path(home).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and _alive(info.get("api_pid", -1)):
            return info
    return {}


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
