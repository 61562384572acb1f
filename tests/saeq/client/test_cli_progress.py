"""A job's progress written to a file or pipe (`make demo > demo.log`): readable lines at most one
per interval, not a bar's carriage returns piling up on one line."""

from __future__ import annotations

import subprocess
import sys

from saeq.dev.local_stack import LocalStack, StackOptions

WRITER = """
import sys, time
from saeq.client.progress import JobProgress

bar = JobProgress(sys.stdout, every_s=0.5)
start = time.monotonic()
while (t := time.monotonic() - start) < 3:
    figures = {"tokens": int(t * 1e6), "tokens_per_s": 123456.7, **{f"f{i}": 1.5 for i in range(40)}}
    job = {"id": "0123456789abcdef", "kind": "harvest", "state": "running",
           "progress": {"fraction": t / 3, "phase": "harvest", "figures": figures}}
    bar.update(job)
    time.sleep(0.005)
job["state"], job["progress"]["fraction"] = "succeeded", 1.0
bar.update(job)
bar.close()
"""


def test_progress_to_a_pipe_is_a_line_per_interval():
    out = subprocess.run([sys.executable, "-c", WRITER], capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert b"\r" not in out.stdout
    lines = out.stdout.decode().splitlines()
    # 3 s at one line per 0.5 s: the first at once, ~6 more, and the last state when it ends.
    assert 5 <= len(lines) <= 9, lines
    assert all(len(line) <= 200 for line in lines), max(map(len, lines))
    assert lines[0].startswith("harvest 01234567 running:harvest ")
    assert lines[-1].startswith("harvest 01234567 succeeded:harvest 100.0% ")


def test_local_stack_parts_write_no_library_bars(tmp_path, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    stack = LocalStack(StackOptions(home=tmp_path))
    stack.redis_url = "redis://127.0.0.1:1/0"  # set by start(); env() names it
    env = stack.env()
    assert env["TQDM_DISABLE"] == "1" and env["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"
