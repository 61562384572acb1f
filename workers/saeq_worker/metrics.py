"""Prometheus metrics of one worker, correct under Celery's prefork pool.

Pool children record into prometheus_client's multiprocess files; the parent sets
PROMETHEUS_MULTIPROC_DIR at `worker_init`, before any child forks, and serves the files merged on
`WorkerSettings.metrics_port`, with what only it knows: that it is up, and its GPUs' memory and
utilisation (read through NVML, which never creates a CUDA context in the parent).
Job totals by state live in Redis and the API exports them; these are this worker's own figures.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

from saeq.platform.registry import DURATION_BUCKETS_S
from saeq.platform.store import ObjectInfo, ObjectStore

log = logging.getLogger("saeq.worker")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_LIVE_FILE = re.compile(r"gauge_live\w+?_(\d+)\.db$")
_made_dir: str | None = None


# ---- in the pool children (and the parent, with the solo pool) ---------------------------------


@dataclass(frozen=True)
class _Metrics:
    jobs_running: Any
    job_duration: Any
    job_run_seconds: Any
    tokens_per_second: Any
    tokens: Any
    artifact_bytes: Any
    shard_cache_events: Any
    shard_cache_bytes: Any
    team_device_seconds: Any
    team_tokens: Any
    team_stored_bytes: Any


@lru_cache(maxsize=1)
def _metrics() -> _Metrics:
    # Created on first use, so in the child that uses them: prometheus_client must be imported
    # after PROMETHEUS_MULTIPROC_DIR is set, and these values then live in this process's files.
    from prometheus_client import Counter, Gauge, Histogram

    return _Metrics(
        jobs_running=Gauge(
            "saeq_worker_jobs_running",
            "Jobs this worker is running now",
            ["kind", "team"],
            registry=None,
            multiprocess_mode="livesum",
        ),
        job_duration=Histogram(
            "saeq_worker_job_duration_seconds",
            "Wall time of job attempts run by this worker, by how they ended",
            ["kind", "outcome"],
            buckets=DURATION_BUCKETS_S,
            registry=None,
        ),
        job_run_seconds=Counter(
            "saeq_worker_job_run_seconds_total",
            "Seconds this worker spent running jobs, counted as they run",
            ["kind", "team"],
            registry=None,
        ),
        # Deprecated for saeq_worker_tokens_total (rate() of it); kept one release for outside dashboards.
        tokens_per_second=Gauge(
            "saeq_worker_tokens_per_second",
            "Deprecated (use rate(saeq_worker_tokens_total)): tokens per second of the jobs running now",
            ["kind"],
            registry=None,
            multiprocess_mode="livesum",
        ),
        tokens=Counter(
            "saeq_worker_tokens",
            "Tokens this worker's jobs advanced by (harvest, train, label, evaluate): rate() is throughput",
            ["kind"],
            registry=None,
        ),
        artifact_bytes=Counter(
            "saeq_worker_artifact_written_bytes_total",
            "Bytes of artifacts this worker wrote to the object store",
            ["kind", "team"],
            registry=None,
        ),
        shard_cache_events=Counter(
            "saeq_worker_shard_cache_events_total",
            "Shard reads through the node's shard cache: hit, miss (fetched from the store), evicted, corrupt",
            ["event"],
            registry=None,
        ),
        shard_cache_bytes=Counter(
            "saeq_worker_shard_cache_bytes_total",
            "Bytes of those events: hit (read from the cache), miss (fetched), evicted, corrupt",
            ["event"],
            registry=None,
        ),
        # Accounting by team (a team is a label; job ids never are): what fair share charges.
        team_device_seconds=Counter(
            "saeq_team_device_seconds",
            "Device-seconds a team's jobs held on this worker: seconds x devices, GPU-seconds on GPU "
            "workers (device=gpu), CPU-seconds on CPU workers (device=cpu)",
            ["team", "device"],
            registry=None,
        ),
        team_tokens=Counter(
            "saeq_team_tokens",
            "Tokens a team's jobs advanced by on this worker (harvest, train, label, evaluate)",
            ["team", "kind"],
            registry=None,
        ),
        team_stored_bytes=Counter(
            "saeq_team_stored_bytes",
            "Bytes a team's jobs wrote to the object store from this worker",
            ["team", "kind"],
            registry=None,
        ),
    )


def _safely(what: str, fn: Callable[[], None]) -> None:
    """Metrics never fail a job (a full disk under the multiprocess dir, say)."""
    try:
        fn()
    except Exception as e:
        log.warning("metrics: %s failed: %s", what, e)


def device_class(device: str) -> str:
    """The `device` label of the team counters: gpu for a CUDA device, else cpu."""
    return "gpu" if device.startswith("cuda") else "cpu"


@dataclass
class JobMeter:
    """One job attempt in this process: running gauge, busy time, throughput, bytes written, and
    the team's device-seconds, tokens and stored bytes."""

    kind: str
    team: str
    device: str = "cpu"
    """The job's device (`cuda`, `cuda:0`, `cpu`): whose seconds it holds."""
    n_devices: int = 1
    """Devices the job holds at once (`spec.gpus`): each second counts this many device-seconds."""
    tokens_before: float = 0.0
    """Tokens the job's recorded progress stood at when this attempt began: a resumed attempt
    counts only what it adds, so a job's tokens are counted about once over its attempts."""
    _started: float = field(default_factory=time.monotonic)
    _ticked: float = 0.0
    _rated: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._ticked = self._started
        _safely("job start", lambda: _metrics().jobs_running.labels(self.kind, self.team).inc())

    def _tick(self) -> None:
        # The heartbeat thread and the job's own thread both tick: one interval is counted once.
        with self._lock:
            now = time.monotonic()
            spent, self._ticked = now - self._ticked, now
        m = _metrics()
        m.job_run_seconds.labels(self.kind, self.team).inc(spent)
        m.team_device_seconds.labels(self.team, device_class(self.device)).inc(spent * self.n_devices)

    def beat(self) -> None:
        """From the job's heartbeat thread: device-seconds so far, even while the job reports nothing."""
        _safely("heartbeat", self._tick)

    def progress(self, figures: dict[str, Any]) -> None:
        """From every `RunningJob.report`: busy time so far, tokens/s and tokens when the job gives them."""

        def update() -> None:
            self._tick()
            rate = figures.get("tokens_per_s")
            if isinstance(rate, (int, float)):
                _metrics().tokens_per_second.labels(self.kind).set(float(rate))
                self._rated = True
            tokens = figures.get("tokens")  # the job's running total, over all its attempts
            if isinstance(tokens, (int, float)) and tokens > self.tokens_before:
                added = float(tokens) - self.tokens_before
                _metrics().team_tokens.labels(self.team, self.kind).inc(added)
                _metrics().tokens.labels(self.kind).inc(added)
                self.tokens_before = float(tokens)

        _safely("progress", update)

    def wrote(self, n_bytes: int) -> None:
        def update() -> None:
            m = _metrics()
            m.artifact_bytes.labels(self.kind, self.team).inc(n_bytes)
            m.team_stored_bytes.labels(self.team, self.kind).inc(n_bytes)

        _safely("artifact bytes", update)

    def finished(self, outcome: str) -> None:
        """`outcome`: succeeded, failed, cancelled, or lease_lost (another worker took it over)."""

        def update() -> None:
            m = _metrics()
            self._tick()
            m.jobs_running.labels(self.kind, self.team).dec()
            if self._rated:  # a finished job has no rate: the gauge is of running jobs
                m.tokens_per_second.labels(self.kind).set(0.0)
            m.job_duration.labels(self.kind, outcome).observe(time.monotonic() - self._started)

        _safely("job end", update)


def recorded_tokens(record: dict) -> float:
    """The `tokens` figure of a job record's last progress (0 for a job that reported none)."""
    progress = record.get("progress")
    figures = progress.get("figures") if isinstance(progress, dict) else None
    tokens = figures.get("tokens") if isinstance(figures, dict) else None
    return float(tokens) if isinstance(tokens, (int, float)) else 0.0


def shard_cache_event(event: str, n_bytes: int) -> None:
    """The node shard cache's `on_event` (saeq.platform.shard_cache)."""

    def update() -> None:
        m = _metrics()
        m.shard_cache_events.labels(event).inc()
        m.shard_cache_bytes.labels(event).inc(n_bytes)

    _safely("shard cache", update)


class CountingStore:
    """The job's object store, counting the bytes of every successful write."""

    def __init__(self, store: ObjectStore, on_write: Callable[[int], None]):
        self._store, self._on_write = store, on_write

    def put(
        self,
        key: str,
        data: bytes | BinaryIO,
        *,
        length: int | None = None,
        content_type: str = "application/octet-stream",
    ) -> None:
        self._store.put(key, data, length=length, content_type=content_type)
        self._on_write(
            length if length is not None else len(data) if isinstance(data, (bytes, bytearray, memoryview)) else 0
        )

    def put_file(self, key: str, path: str | Path) -> None:
        self._store.put_file(key, path)
        self._on_write(os.path.getsize(path))

    # Reads and deletes go straight to the store.
    def get(self, key: str) -> bytes:
        return self._store.get(key)

    def get_file(self, key: str, path: str | Path) -> None:
        self._store.get_file(key, path)

    def exists(self, key: str) -> bool:
        return self._store.exists(key)

    def size(self, key: str) -> int:
        return self._store.size(key)

    def list(self, prefix: str) -> list[ObjectInfo]:
        return self._store.list(prefix)

    def delete(self, key: str) -> None:
        self._store.delete(key)

    def download_url(self, key: str, expires_s: int = 3600) -> str:
        return self._store.download_url(key, expires_s)

    def __getattr__(self, name: str) -> Any:  # anything a store offers beyond the protocol
        return getattr(self._store, name)


# ---- in the parent ----------------------------------------------------------------------------


def serve(worker, port: int, addr: str) -> None:
    """At `worker_init`: make the multiprocess dir ready (empty), then serve /metrics on `port`.

    Runs before the pool forks, so every child inherits PROMETHEUS_MULTIPROC_DIR.
    """
    global _made_dir
    path = os.environ.get(MULTIPROC_ENV)
    if "prometheus_client" in sys.modules and not path:
        raise RuntimeError(
            "prometheus_client was imported in the worker's parent before "
            f"{MULTIPROC_ENV} was set; pool children's metrics would be lost"
        )
    if path:  # given (a Kubernetes emptyDir, say): only our files go, and only at start
        Path(path).mkdir(parents=True, exist_ok=True)
        for f in glob.glob(os.path.join(path, "*.db")):
            os.remove(f)
    else:
        path = _made_dir = tempfile.mkdtemp(prefix="saeq-worker-metrics-")
        os.environ[MULTIPROC_ENV] = path

    from prometheus_client import CollectorRegistry, start_http_server

    reg = CollectorRegistry(auto_describe=False)
    reg.register(WorkerCollector(worker, path))
    start_http_server(port, addr=addr, registry=reg)
    # One scrape now, before the pool forks: what a first scrape imports (pynvml, ctypes.util,
    # prometheus_client.core, the server's own) is imported here, so no later scrape holds an
    # import lock that a child forked meanwhile would inherit held (the fork lock above covers
    # the collection; this covers the rest of the request).
    _scrape_once(reg, addr, port)
    log.info("worker metrics on http://%s:%d/metrics (multiprocess dir %s)", addr, port, path)


def _scrape_once(reg, addr: str, port: int) -> None:
    import urllib.request

    from prometheus_client import generate_latest

    host = "127.0.0.1" if addr in ("", "0.0.0.0") else "::1" if addr == "::" else addr
    url = f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            answer.read()
    except OSError as e:  # served on an address this process cannot reach itself
        log.warning("worker metrics: the warm-up scrape of %s failed (%s); collecting directly", url, e)
        generate_latest(reg)


def process_died(pid: int) -> None:
    """`worker_process_shutdown`: the gauges of running work of that child no longer count."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, path)


def cleanup() -> None:
    """`worker_shutdown`: remove the dir this worker made (not one it was given)."""
    if _made_dir:
        shutil.rmtree(_made_dir, ignore_errors=True)


_scrape_lock = threading.Lock()
"""Held by a scrape while it collects, and by os.fork (register_at_fork below): the pool never forks
a child in the middle of a scrape. A lock the scrape thread held at the fork (an import's module
lock, NVML's) would stay held forever in the child, which then hangs on it: a job received and
never started (seen in tests/saeq_worker/test_metrics_team.py, whose scrape meets the pool's start)."""
FORK_WAIT_S = 10.0
"""A fork waits at most this long for a scrape to end (one stuck in NVML must not stop the pool)."""
_held_for_fork = False


def _before_fork() -> None:
    global _held_for_fork
    _held_for_fork = _scrape_lock.acquire(timeout=FORK_WAIT_S)


def _after_fork_in_parent() -> None:
    if _held_for_fork:
        _scrape_lock.release()


def _after_fork_in_child() -> None:
    global _scrape_lock
    _scrape_lock = threading.Lock()  # the child has no scrape thread: a fresh, free lock


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)


class WorkerCollector:
    """The pool's merged multiprocess files, plus the parent's own gauges."""

    def __init__(self, worker, path: str):
        from prometheus_client.multiprocess import MultiProcessCollector

        self.worker, self.path = worker, path
        self.files = MultiProcessCollector(None, path=path)

    def collect(self):
        with _scrape_lock:  # all of it here, not across the generator's yields
            families = list(self._families())
        yield from families

    def _families(self):
        from prometheus_client.core import GaugeMetricFamily

        _forget_dead_children(self.path)
        yield from self.files.collect()

        up = GaugeMetricFamily("saeq_worker_up", "1 for each queue this worker consumes", labels=["queue"])
        for queue in sorted(self.worker.app.amqp.queues.consume_from or ()):
            up.add_metric([queue], 1.0)
        yield up
        yield GaugeMetricFamily(
            "saeq_worker_pool_processes", "Jobs this worker can run at once", value=float(self.worker.concurrency or 1)
        )
        yield from gpu_families()


def _forget_dead_children(path: str) -> None:
    # A child killed outright (the kernel's OOM killer) never sends worker_process_shutdown: its
    # live gauges (a job "running") would count forever. Pids are checked at every scrape.
    from prometheus_client import multiprocess

    for pid in {int(m.group(1)) for f in os.listdir(path) if (m := _LIVE_FILE.match(f))}:
        if pid != os.getpid() and not _alive(pid):
            multiprocess.mark_process_dead(pid, path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def gpu_families():
    """Memory and utilisation of each GPU this worker sees, from NVML; declared without samples
    when there is no NVIDIA driver, so dashboards and rules name metrics that exist everywhere."""
    from prometheus_client.core import GaugeMetricFamily

    used = GaugeMetricFamily("saeq_worker_gpu_memory_used_bytes", "GPU memory in use (all processes)", labels=["gpu"])
    total = GaugeMetricFamily("saeq_worker_gpu_memory_total_bytes", "GPU memory", labels=["gpu"])
    util = GaugeMetricFamily(
        "saeq_worker_gpu_utilization_ratio",
        "Fraction of the last sample period a kernel ran on the GPU",
        labels=["gpu"],
    )
    for index, mem_used, mem_total, busy in _nvml_readings():
        used.add_metric([str(index)], float(mem_used))
        total.add_metric([str(index)], float(mem_total))
        util.add_metric([str(index)], busy)
    return used, total, util


def _nvml_readings() -> list[tuple[int, int, int, float]]:
    nvml = _nvml()
    if nvml is None:
        return []
    out = []
    with contextlib.suppress(Exception):
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            mem = nvml.nvmlDeviceGetMemoryInfo(h)
            out.append((i, int(mem.used), int(mem.total), float(nvml.nvmlDeviceGetUtilizationRates(h).gpu) / 100.0))
    return out


@lru_cache(maxsize=1)
def _nvml():
    """The initialised `pynvml` module (nvidia-ml-py), or None without it or without a driver."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml
    except Exception:
        return None
