"""Tokens as a counter: saeq_worker_tokens_total{kind} counts what each attempt adds, so
dashboards take rate() of it and a finished job's tokens stay counted."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from saeq_worker import metrics


class _FakeWorker:
    concurrency = 1
    app = type("App", (), {"amqp": type("Amqp", (), {"queues": type("Q", (), {"consume_from": {"gpu": 1}})})})


def test_tokens_total_counts_each_attempts_added_tokens_and_survives_the_end(tmp_path):
    # A resumed harvest attempt whose record stood at 100 tokens, then a fresh train job.
    script = """
    from saeq_worker.metrics import JobMeter
    m = JobMeter("harvest", "lab", tokens_before=100)
    m.progress({"tokens": 150, "tokens_per_s": 10.0})
    m.progress({"tokens": 400})
    m.finished("succeeded")
    t = JobMeter("train", "lab")
    t.progress({"tokens": 64})
    t.finished("failed")
    """
    child = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env={**os.environ, metrics.MULTIPROC_ENV: str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert child.returncode == 0, child.stderr
    reg = CollectorRegistry()
    reg.register(metrics.WorkerCollector(_FakeWorker(), str(tmp_path)))
    tokens = {
        s.labels["kind"]: s.value
        for f in text_string_to_metric_families(generate_latest(reg).decode())
        for s in f.samples
        if s.name == "saeq_worker_tokens_total"
    }
    assert tokens == {"harvest": 300.0, "train": 64.0}  # a counter: the jobs ended, the totals stay
