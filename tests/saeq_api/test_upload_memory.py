"""What a large upload costs the API process in memory: a real API (uvicorn, local store) takes a
60 MB JSONL corpus while its peak RSS is watched. Run with -s to see the figures."""

from __future__ import annotations

import os
import secrets
import sys
import time
from pathlib import Path

import httpx
import pytest

from saeq.platform.teams import new_key
from tests.servers import Proc, free_port, wait_until

UPLOAD_MB = 60
PEAK_GROWTH_BOUND_MIB = 48
"""The file's size must not show in the API's memory: it is spooled to disk and streamed. (Before,
it was held about three times over: a 60 MB upload raised the peak by about 180 MiB.)"""


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


@pytest.fixture
def api_process(redis_srv, tmp_path):
    import redis

    url = f"{redis_srv.url.rsplit('/', 1)[0]}/14"
    redis.Redis.from_url(url).flushdb()
    key, port = new_key()[1], free_port()
    env = {
        "SAEQ_REDIS_URL": url,
        "SAEQ_STORE": f"file://{tmp_path / 'store'}",
        "SAEQ_BOOTSTRAP_ADMIN_KEY": key,
        "SAEQ_SIGNING_KEY": secrets.token_hex(32),
        "SAEQ_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    proc = Proc(
        [sys.executable, "-m", "uvicorn", "saeq_api.main:app", "--host", "127.0.0.1", "--port", str(port)],
        tmp_path / "api.log",
        cwd=tmp_path,
        env=env,
    )

    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, proc, "the API", timeout=120)
        yield proc, f"http://127.0.0.1:{port}", key, tmp_path / "store"
    finally:
        proc.stop()


def test_a_large_upload_does_not_sit_in_the_api_memory(api_process, tmp_path):
    proc, url, key, store = api_process
    corpus = tmp_path / "big.jsonl"
    line = b'{"text": "' + b"tokens of a long document " * 8 + b'"}\n'
    n_lines = UPLOAD_MB * 1_000_000 // len(line)
    with open(corpus, "wb") as f:
        for _ in range(n_lines // 1000):
            f.write(line * 1000)
    size = corpus.stat().st_size
    headers = {"Authorization": f"Bearer {key}"}
    httpx.get(f"{url}/v1/uploads", headers=headers)  # the route's imports and caches are warm
    rss_before = _status_kib(proc.pid, "VmRSS")
    Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # the peak (VmHWM) restarts from now

    t0 = time.monotonic()
    with open(corpus, "rb") as f:
        r = httpx.post(
            f"{url}/v1/uploads", files={"file": ("big.jsonl", f, "application/x-ndjson")}, headers=headers, timeout=600
        )
    seconds = time.monotonic() - t0
    growth_mib = (_status_kib(proc.pid, "VmHWM") - rss_before) / 1024
    print(
        f"\nupload of {size / 1e6:.1f} MB ({n_lines // 1000 * 1000} lines): {r.status_code} in {seconds:.1f} s; "
        f"API peak RSS {growth_mib:+.1f} MiB over {rss_before / 1024:.0f} MiB (bound {PEAK_GROWTH_BOUND_MIB} MiB)"
    )
    assert r.status_code == 201, r.text
    up = r.json()
    assert up["size"] == size and up["n_documents"] == n_lines // 1000 * 1000
    assert (store / up["key"]).stat().st_size == size  # every byte stored
    assert growth_mib < PEAK_GROWTH_BOUND_MIB
