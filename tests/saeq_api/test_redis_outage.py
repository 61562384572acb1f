"""The API while its Redis restarts (requests wait for it) or stays away (503 with Retry-After), and
the Python client riding that out. A Redis of this test's own, with the append-only file on."""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import uvicorn

from saeq.client.client import Client
from saeq.platform.teams import new_key
from saeq_api.main import create_app
from saeq_api.settings import ApiSettings
from tests.servers import free_port, redis_server

pytestmark = pytest.mark.integration

HARVEST = {"kind": "harvest", "max_tokens": 4096}


@contextlib.contextmanager
def _api(settings: ApiSettings):
    """The real app under uvicorn on a loopback port, in a thread."""
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=free_port(), log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the API did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _through_restart(srv, down_s: float, call):
    """`call()` in a thread while Redis is down for `down_s`; its result. The restart happens in
    this thread: a server dies with the thread that started it (tests.servers)."""
    with ThreadPoolExecutor(1) as pool:
        srv.stop()
        future = pool.submit(call)
        time.sleep(down_s)
        srv.start()
        return future.result(timeout=60)


def test_api_waits_through_a_redis_restart_and_answers_503_past_it(tmp_path, s3_srv):
    key = new_key()[1]
    with redis_server(appendonly=True, log_dir=tmp_path) as srv:
        settings = ApiSettings(
            redis_url=srv.url,
            redis_retry_s=3,
            store=f"s3://{s3_srv.bucket}",
            s3_endpoint=s3_srv.endpoint,
            s3_access_key=s3_srv.access_key,
            s3_secret_key=s3_srv.secret_key,
            bootstrap_admin_key=key,
            signing_key=secrets.token_hex(32),
        )
        with _api(settings) as url, Client(url, api_key=key, timeout=30) as client:
            job = client.submit(HARVEST)

            # A restart shorter than the registry's retries: the request just takes longer.
            got = _through_restart(srv, 1.0, lambda: client._call("GET", f"/v1/jobs/{job['id']}", retry=False))
            assert got["state"] == "queued"  # the append-only file kept it

            # Longer: 503, saying why and when to come back.
            srv.stop()
            t0 = time.monotonic()
            resp = client.http.get(f"/v1/jobs/{job['id']}")
            assert resp.status_code == 503, resp.text
            assert 2.5 < time.monotonic() - t0 < 15
            assert resp.headers["Retry-After"] == "5" and "Redis" in resp.json()["detail"]

            srv.start()

            # The client retries a GET and a submit (with its own Idempotency-Key) through it.
            assert _through_restart(srv, 4.0, lambda: client.get(job["id"]))["state"] == "queued"
            second = _through_restart(srv, 4.0, lambda: client.submit(HARVEST))
            assert [j["id"] for j in client.list()] == [second["id"], job["id"]]  # one job per submit
