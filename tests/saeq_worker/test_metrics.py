"""A worker's own Prometheus metrics and liveness file: what two prefork children record is served
merged by their parent; a child killed outright stops counting as running; an idle worker keeps
its liveness file fresh; GPU figures come from NVML."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import types

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from saeq.client.client import Client
from saeq.specs import HarvestSpec, ModelSpec
from saeq_worker import liveness, metrics
from tests.fixtures_stack import make_stack
from tests.servers import free_port
from tests.tiny_model import save_tiny_llama


def values(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of a scrape."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(scrape: dict, name: str, **labels) -> float:
    return scrape.get((name, tuple(sorted(labels.items()))), 0.0)


# ------------------------------------------------------------------------- without a stack


class _FakeWorker:
    concurrency = 3
    app = types.SimpleNamespace(amqp=types.SimpleNamespace(queues=types.SimpleNamespace(consume_from={"gpu": 1})))


_FORK_SAFE = textwrap.dedent("""
    import os, sys, threading, time, types, urllib.request
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[1]
    from saeq_worker import metrics
    queues = types.SimpleNamespace(consume_from={"gpu": 1})
    worker = types.SimpleNamespace(concurrency=1, app=types.SimpleNamespace(amqp=types.SimpleNamespace(queues=queues)))
    port = int(sys.argv[2])
    metrics.serve(worker, port, "127.0.0.1")
    before = set(sys.modules)
    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    print("imported by a scrape after serve:", sorted(set(sys.modules) - before))
    metrics._scrape_lock.acquire()  # a scrape collecting, for the next 0.5 s
    threading.Timer(0.5, metrics._scrape_lock.release).start()
    t0 = time.monotonic()
    pid = os.fork()
    if pid == 0:  # the child's lock is free: a scrape there (the solo pool's) never waits on the parent's
        os._exit(0 if metrics._scrape_lock.acquire(timeout=1) else 3)
    waited = time.monotonic() - t0
    print("fork waited", round(waited, 2), "child", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
""")


def test_a_scrape_never_runs_across_a_fork_of_the_pool(tmp_path):
    # A pool child forked while the scrape thread held a lock (the first scrape imports pynvml,
    # ctypes.util, ...) inherits it held and hangs: a job received and never started. serve()
    # scrapes once before the pool forks, and a fork waits for a scrape that is collecting.
    out = subprocess.run(
        [sys.executable, "-c", _FORK_SAFE, str(tmp_path), str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != metrics.MULTIPROC_ENV},
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "imported by a scrape after serve: []" in lines, out.stdout
    (fork,) = [ln for ln in lines if ln.startswith("fork waited")]
    waited, child = float(fork.split()[2]), fork.split()[-1]
    assert 0.4 <= waited < 5 and child == "0", out.stdout


def test_a_child_killed_outright_no_longer_counts_as_running(tmp_path):
    # A child records a running job and dies without worker_process_shutdown (as under the OOM killer).
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent("""
        from saeq_worker.metrics import JobMeter
        JobMeter("harvest", "default").progress({"tokens_per_s": 1000.0})
        """),
        ],
        env={**os.environ, metrics.MULTIPROC_ENV: str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert child.returncode == 0, child.stderr
    assert any(f.name.startswith("gauge_livesum") for f in tmp_path.iterdir())

    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry()
    reg.register(metrics.WorkerCollector(_FakeWorker(), str(tmp_path)))
    scrape = values(generate_latest(reg).decode())
    assert value(scrape, "saeq_worker_jobs_running", kind="harvest", team="admin") == 0
    assert value(scrape, "saeq_worker_tokens_per_second", kind="harvest") == 0
    assert value(scrape, "saeq_worker_job_run_seconds_total", kind="harvest", team="admin") >= 0
    assert value(scrape, "saeq_worker_up", queue="gpu") == 1
    assert value(scrape, "saeq_worker_pool_processes") == 3


def test_gpu_memory_and_utilisation_come_from_nvml(monkeypatch):
    mem = types.SimpleNamespace(used=3 << 30, total=80 << 30)
    fake = types.SimpleNamespace(
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetMemoryInfo=lambda h: mem,
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=50 + h),
    )
    monkeypatch.setattr(metrics, "_nvml", lambda: fake)
    used, total, util = metrics.gpu_families()
    assert [(s.labels["gpu"], s.value) for s in used.samples] == [("0", 3 << 30), ("1", 3 << 30)]
    assert [s.value for s in total.samples] == [80 << 30] * 2
    assert [s.value for s in util.samples] == [0.50, 0.51]
    monkeypatch.setattr(metrics, "_nvml", lambda: None)  # no driver: declared, no samples
    assert [f.samples for f in metrics.gpu_families()] == [[], [], []]


def test_artifact_bytes_are_counted_on_successful_writes_only(tmp_path):
    from saeq.platform.store import AlreadyExists, LocalStore

    written = []
    store = metrics.CountingStore(LocalStore(tmp_path), written.append)
    store.put("a/b", b"12345")
    with pytest.raises(AlreadyExists):
        store.put("a/b", b"123")
    assert written == [5] and store.get("a/b") == b"12345" and store.exists("a/b")


def test_liveness_probe_checks_the_file_age(tmp_path):
    path = tmp_path / "heartbeat"
    assert liveness.main(["--file", str(path)]) == 1
    liveness.touch(str(path))
    assert liveness.main(["--file", str(path), "--max-age", "60"]) == 0
    os.utime(path, (time.time() - 120, time.time() - 120))
    assert liveness.main(["--file", str(path), "--max-age", "60"]) == 1


# ---------------------------------------------------------------------------- with a stack


@pytest.fixture(scope="module")
def worker_stack(tmp_path_factory, redis_srv, s3_srv):
    home = tmp_path_factory.mktemp("metrics-stack")
    port = free_port()
    st = make_stack(
        home,
        redis_srv,
        s3_srv,
        SAEQ_METRICS_PORT=str(port),
        SAEQ_METRICS_ADDR="127.0.0.1",
        SAEQ_HEARTBEAT_FILE=str(home / "alive" / "heartbeat"),
    )
    st.opts.worker_concurrency = 2
    with st:
        st.metrics_url = f"http://127.0.0.1:{port}/metrics"
        st.heartbeat = home / "alive" / "heartbeat"
        yield st


def _scrape(url: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return values(httpx.get(url, timeout=5).raise_for_status().text)
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@pytest.mark.integration
def test_an_idle_worker_keeps_its_liveness_file_fresh(worker_stack):
    deadline = time.monotonic() + 30
    while not worker_stack.heartbeat.exists():
        assert time.monotonic() < deadline, "the worker never touched its liveness file"
        time.sleep(0.2)
    first = worker_stack.heartbeat.stat().st_mtime
    time.sleep(2.5)  # SAEQ_HEARTBEAT_S=1 in test stacks; no job runs
    assert worker_stack.heartbeat.stat().st_mtime > first
    assert liveness.main(["--file", str(worker_stack.heartbeat), "--max-age", "5"]) == 0


@pytest.mark.integration
def test_two_prefork_children_are_counted_by_their_parent(worker_stack, tmp_path):
    model = save_tiny_llama(tmp_path / "tiny", n_layers=2, d_model=32)
    before = _scrape(worker_stack.metrics_url)
    assert value(before, "saeq_worker_up", queue="gpu") == value(before, "saeq_worker_up", queue="steer") == 1
    assert value(before, "saeq_worker_pool_processes") == 2
    spec = HarvestSpec(
        model=ModelSpec(name=str(model)),
        hooks=["blocks.0.hook_resid_post"],
        max_tokens=8192,
        context_len=32,
        batch_size=4,
        shard_tokens=2048,
    )
    with Client(worker_stack.url, api_key=worker_stack.admin_key, timeout=60) as client:
        # Long enough to still be running when the second, short job is handed out.
        first = client.submit(spec.model_copy(update={"max_tokens": 65_536, "shard_tokens": 16_384}))["id"]
        # Once a child has taken the first job, the pool hands the second to the idle child.
        deadline = time.monotonic() + 60
        while client.get(first)["state"] == "queued":
            assert time.monotonic() < deadline, "the first job never started"
            time.sleep(0.05)
        ids = [first, client.submit(spec.model_copy(update={"max_tokens": 4096}))["id"]]
        jobs = [client.wait(i, timeout=180) for i in ids]
        stored = sum(a["size"] for i in ids for a in client.artifacts(i)["artifacts"])
    assert all(j["state"] == "succeeded" for j in jobs)
    assert len({j["worker"] for j in jobs}) == 2, "the two jobs ran in one process"

    after = _scrape(worker_stack.metrics_url)
    delta = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)
    assert delta("saeq_worker_job_duration_seconds_count", kind="harvest", outcome="succeeded") == 2
    assert delta("saeq_worker_artifact_written_bytes_total", kind="harvest", team="admin") == stored
    run_s = delta("saeq_worker_job_run_seconds_total", kind="harvest", team="admin")
    took_s = delta("saeq_worker_job_duration_seconds_sum", kind="harvest", outcome="succeeded")
    assert 0 < run_s == pytest.approx(took_s, rel=0.05)
    assert value(after, "saeq_worker_jobs_running", kind="harvest", team="admin") == 0
    assert value(after, "saeq_worker_tokens_per_second", kind="harvest") == 0
