"""`saeq` run as a user runs it (`python -m saeq ...` in a subprocess) fails with one line on
stderr that says what to do, never a traceback: on a refused port, and on a real API (served on
loopback) given a wrong key or a wrong job id."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.saeq_api.conftest import api_settings  # noqa: F401  (a fixture)
from tests.saeq_api.test_browser_login import served  # noqa: F401  (a fixture)
from tests.servers import free_port


def _saeq(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    # HOME: no stack this machine's user started is found; SAEQ_*: none of the caller's settings.
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SAEQ_")}
    clean.update(HOME=str(tmp_path), SAEQ_RETRY_FOR_S="0", **env)
    return subprocess.run([sys.executable, "-m", "saeq", *args], capture_output=True, text=True, env=clean, timeout=60)


def _one_line(out: subprocess.CompletedProcess) -> str:
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1, out.stderr
    return lines[0]


@pytest.mark.parametrize("command", [["status"], ["status", "abc"], ["cancel", "abc"], ["logs", "abc"], ["whoami"]])
def test_refused_connection_is_one_line_naming_the_fix(tmp_path, command):
    url = f"http://127.0.0.1:{free_port()}"
    line = _one_line(_saeq(tmp_path, "--url", url, *command))
    assert line == (
        f"Error: cannot reach the saeq API at {url} (connection refused): start it with `saeq up` "
        "or pass --url / SAEQ_URL"
    )


def test_debug_shows_the_traceback(tmp_path):
    out = _saeq(tmp_path, "--url", f"http://127.0.0.1:{free_port()}", "status", SAEQ_DEBUG="1")
    assert out.returncode != 0 and "Traceback" in out.stderr and "ConnectError" in out.stderr


def test_wrong_key_and_wrong_id_on_a_real_api(tmp_path, served):  # noqa: F811
    url, admin_key = served
    for command in (["status"], ["cancel", "abc"], ["whoami"], ["teams", "list"]):
        line = _one_line(_saeq(tmp_path, "--url", url, "--api-key", "saeq_wrong", *command))
        assert line.startswith(f"Error: the saeq API at {url} refused the API key (HTTP 401"), line
        assert "--api-key or SAEQ_API_KEY" in line
    line = _one_line(_saeq(tmp_path, "--url", url, "status"))  # no key at all
    assert line.startswith(f"Error: the saeq API at {url} needs an API key (HTTP 401"), line
    line = _one_line(_saeq(tmp_path, "--url", url, "--api-key", admin_key, "status", "nosuchjob"))
    assert line.startswith("Error: not found (HTTP 404"), line
    # The read commands answer --json: whoami's is the API's /v1/me answer.
    out = _saeq(tmp_path, "--url", url, "--api-key", admin_key, "whoami", "--json")
    assert out.returncode == 0, out.stderr
    import json

    assert json.loads(out.stdout)["role"] == "admin"


def test_version_and_module_entry_point(tmp_path):
    from importlib.metadata import version

    out = _saeq(tmp_path, "--version")
    assert out.returncode == 0 and out.stdout.strip() == f"saeq, version {version('saeq')}"
