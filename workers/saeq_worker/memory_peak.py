"""The job's measured peak memory beside its estimate (saeq.platform.memory_estimate), written into
the job's progress as `memory: {estimated_bytes, measured_peak_bytes, device}` when it stops.

On CUDA the peak is torch.cuda.max_memory_allocated, reset when the job starts (so it counts what
was already allocated then, a cached model included, as the estimate does), the largest over the
job's devices. On CPU it is the process's RSS high-water mark, sampled every 50 ms on a thread,
minus the RSS before the job: ru_maxrss would span every job a prefork child ran, and Linux's
VmHWM too. So on CPU a model an earlier job left cached in the process is not counted, and
allocator slack that glibc keeps after a free is. Neither sees processes the job spawns.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import redis

from saeq.platform.memory_estimate import estimate_peak
from saeq.specs import parse_spec

log = logging.getLogger("saeq.worker")

SAMPLE_S = 0.05
_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """This process's resident set now (/proc/self/statm: cheap enough to read every 50 ms)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class PeakMeter:
    """Measures the peak memory of what runs between start() and stop(), on `devices`."""

    def __init__(self, devices: list[str]):
        self.devices = devices
        self.cuda = devices[0].startswith("cuda")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rss_before = 0
        self._rss_peak = 0

    def start(self) -> PeakMeter:
        if self.cuda:
            import torch

            for d in dict.fromkeys(self.devices):
                torch.cuda.reset_peak_memory_stats(d)
            return self
        self._rss_before = self._rss_peak = rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="memory-peak")
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._rss_peak = max(self._rss_peak, rss_bytes())

    def stop(self) -> int:
        """The peak in bytes since start()."""
        if self.cuda:
            import torch

            return max(int(torch.cuda.max_memory_allocated(d)) for d in dict.fromkeys(self.devices))
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
        self._rss_peak = max(self._rss_peak, rss_bytes())
        return self._rss_peak - self._rss_before


def _resolver(registry) -> Callable[[str], object]:
    def resolve(job_id: str) -> object:
        job = registry.get(job_id)
        if job is None or not isinstance(job.get("spec"), dict):
            return None  # a spec kept in the store: no estimate rather than a read per lookup
        try:
            return parse_spec(job["spec"])
        except ValueError:
            return None

    return resolve


def memory_figures(spec: Any, device: str, measured_peak_bytes: int, registry) -> dict[str, Any]:
    """What the job's progress gets: the estimate (None when the spec cannot be estimated) and the peak."""
    kind = "cuda" if device.startswith("cuda") else "cpu"
    try:
        estimate = estimate_peak(spec, device=kind, resolve=_resolver(registry))
    except redis.RedisError as e:
        log.warning("memory estimate not made: %s", e)
        estimate = None
    return {
        "estimated_bytes": estimate.total_bytes if estimate else None,
        "measured_peak_bytes": measured_peak_bytes,
        "device": device,
        "estimated_parts": estimate.parts if estimate else None,
    }


def measured(body: Callable[[Any], str]) -> Callable[[Any], str]:
    """`body` (a job's work, given its RunningJob), with its peak memory measured and written into the
    job's progress as `memory` when it ends, however it ends (an out-of-memory most of all)."""

    def run(job) -> str:
        meter = PeakMeter(job.devices).start()
        try:
            return body(job)
        finally:
            peak = meter.stop()
            if not job._lease_lost.is_set():  # another worker owns the record now
                _record(job, memory_figures(job.spec, job.device, peak, job.registry))

    return run


def _record(job, memory: dict[str, Any]) -> None:
    try:
        record = job.registry.get(job.id) or {}
        job.registry.report(job.id, {**(record.get("progress") or {}), "memory": memory})
    except redis.RedisError as e:
        log.warning("job %s: memory figures not recorded: %s", job.id, e)
        return
    est = memory["estimated_bytes"]
    log.info(
        "job %s: peak memory %.1f MiB on %s (estimated %s)",
        job.id,
        memory["measured_peak_bytes"] / 2**20,
        job.device,
        "-" if est is None else f"{est / 2**20:.1f} MiB",
    )
