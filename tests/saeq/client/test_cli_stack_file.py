"""After `saeq up --home DIR` (what the demo's last line tells a user to run), the client and
`saeq status` find that stack from ~/.saeq/current, with neither SAEQ_HOME nor --url."""

from __future__ import annotations

import json
import os

from saeq.client.client import Client
from saeq.client.stack_file import forget_current_home, record_current_home


def _stack_in(home, url: str, key: str) -> None:
    home.mkdir(parents=True)
    # api_pid: a live process (this one), as a running stack's API is.
    (home / "stack.json").write_text(json.dumps({"url": url, "api_pid": os.getpid(), "api_key": key}))


def test_client_finds_the_stack_started_under_another_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    for name in ("SAEQ_HOME", "SAEQ_URL", "SAEQ_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    demo_home = tmp_path / "user" / ".saeq" / "demo"
    _stack_in(demo_home, "http://127.0.0.1:45678", "saeq_demo_admin")
    assert Client().url == "http://127.0.0.1:8000"  # not recorded: not found

    record_current_home(demo_home)
    with Client() as found:
        assert (found.url, found.api_key) == ("http://127.0.0.1:45678", "saeq_demo_admin")

    # SAEQ_HOME's own running stack comes first.
    monkeypatch.setenv("SAEQ_HOME", str(tmp_path / "other"))
    _stack_in(tmp_path / "other", "http://127.0.0.1:45999", "saeq_other_admin")
    assert Client().url == "http://127.0.0.1:45999"
    monkeypatch.delenv("SAEQ_HOME")

    forget_current_home(demo_home)  # what `saeq up` does when it stops
    assert Client().url == "http://127.0.0.1:8000"
