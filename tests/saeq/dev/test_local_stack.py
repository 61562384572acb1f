"""`saeq up` on a shared host, driven as a user would (the real command, its own Redis, a local
store): secrets stay in its owner's files, never on stdout; Redis wants the password; download
links are signed with the stack's own key. And the API and workers refuse to start without a
secret signing key unless SAEQ_INSECURE_DEV=1."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis
from redis.connection import parse_url

from saeq.dev.local_stack import LocalStack, StackOptions
from saeq.platform.store import sign_local
from tests.fixtures_stack import make_stack
from tests.servers import free_port


def _read_lines(proc: subprocess.Popen, n: int, timeout_s: float) -> str:
    """What `proc` printed, once it printed `n` lines (or exited, or `timeout_s` passed)."""
    assert proc.stdout is not None, "start it with stdout=subprocess.PIPE"
    out, deadline = b"", time.monotonic() + timeout_s
    while out.count(b"\n") < n and time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 1)[0]:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            out += chunk
    return out.decode()


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.fixture
def saeq_up(tmp_path):
    """`saeq up` in its own home; (home, stdout of its start, stack.json)."""
    home, port = tmp_path / "home", free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAEQ_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "saeq.client.cli", "up", "--home", str(home), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        printed = _read_lines(proc, 3, timeout_s=240)
        assert "saeq is up" in printed, printed
        yield home, printed, json.loads((home / "stack.json").read_text())
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_saeq_up_keeps_its_secrets_to_its_owner(saeq_up):
    home, printed, info = saeq_up
    secrets = {
        "admin key": info["api_key"],
        "signing key": info["signing_key"],
        "redis password": parse_url(info["redis_url"])["password"],
    }
    assert all(len(v) >= 32 for v in secrets.values()), secrets.keys()
    assert [name for name, value in secrets.items() if value in printed] == [], printed
    assert str(home / "stack.json") in printed  # where the key is, instead

    # Files: the home, Redis's data and the store are the owner's only.
    assert {p: _mode(home / p) for p in ["", "redis", "store", "logs"]} == dict.fromkeys(
        ["", "redis", "store", "logs"], 0o700
    )
    private_files = [home / "stack.json", home / "redis.conf", *(home / "redis").iterdir(), *(home / "logs").iterdir()]
    assert any(p.name == "appendonly.aof" for p in private_files)
    assert {str(p): _mode(p) for p in private_files} == dict.fromkeys(map(str, private_files), 0o600)

    # Redis answers nothing without the password (no admin key minted by writing to it).
    url = info["redis_url"]
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).set("saeq:keys:forged", "admin")
    assert redis.Redis.from_url(url).ping()

    with httpx.Client(base_url=info["url"], headers={"Authorization": f"Bearer {info['api_key']}"}) as api:
        # No local paths by default: a spec naming a file of the local store is refused at submit.
        store_file = str(home / "store")
        resp = api.post("/v1/jobs", json={"spec": {"kind": "harvest", "model": {"name": store_file}}})
        assert resp.status_code == 422 and resp.json()["detail"][0]["field"] == "spec.model.name", resp.text
        # Links are signed with this stack's own key: the public default forges nothing.
        up = api.post("/v1/uploads", files={"file": ("notes.txt", b"private corpus\n")})
        assert up.status_code == 201, up.text
        key, expires = up.json()["key"], int(time.time()) + 300
        for signing_key, status in [(b"saeq-dev-signing-key", 403), (info["signing_key"].encode(), 200)]:
            got = httpx.get(
                f"{info['url']}/v1/files/{key}",
                params={"expires": expires, "sig": sign_local(signing_key, key, expires)},
            )
            assert got.status_code == status, got.text
        assert got.content == b"private corpus\n"
        assert _mode(home / "store" / key) == 0o600


def test_each_stack_gets_its_own_signing_key_and_redis_password(tmp_path):
    stacks = [LocalStack(StackOptions(home=tmp_path)) for _ in range(2)]
    assert stacks[0].signing_key != stacks[1].signing_key
    assert stacks[0].redis_password != stacks[1].redis_password
    assert len(stacks[0].signing_key) == 64


def test_api_and_worker_refuse_to_start_without_a_signing_key_unless_insecure_dev(tmp_path, redis_srv, s3_srv):
    with (
        pytest.raises(RuntimeError, match="api did not start") as e,
        make_stack(tmp_path / "no-key", redis_srv, s3_srv, SAEQ_SIGNING_KEY=""),
    ):
        pass
    assert "refuses to start: SAEQ_SIGNING_KEY is not set" in str(e.value)

    env = dict(os.environ, SAEQ_REDIS_URL=redis_srv.url, SAEQ_SIGNING_KEY="saeq-dev-signing-key")
    worker = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "saeq_worker.celery_app",
            "worker",
            "-Q",
            "cpu",
            "--without-gossip",
            "--without-mingle",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert worker.returncode != 0
    assert "saeq worker refuses to start: SAEQ_SIGNING_KEY is a published example value" in worker.stderr

    with make_stack(tmp_path / "insecure", redis_srv, s3_srv, SAEQ_SIGNING_KEY="", SAEQ_INSECURE_DEV="1") as st:
        assert httpx.get(f"{st.url}/readyz").status_code == 200
        deadline = time.monotonic() + 240
        while b" ready." not in (st.logs / "worker.log").read_bytes() and time.monotonic() < deadline:
            assert st.procs["worker"].poll() is None, (st.logs / "worker.log").read_text()[-3000:]
            time.sleep(1)
        assert b" ready." in (st.logs / "worker.log").read_bytes()
