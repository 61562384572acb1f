"""The worker's advertisement (saeq.platform.pools): what it offers per queue it consumes (device,
memory of one device, device count, job slots), renewed every few seconds from the consumer's event
loop with a TTL, and withdrawn at shutdown. The API admits jobs against it, the scheduler gates
dispatch on the slots.

The main process must never initialise CUDA (its forked children would inherit a broken context),
so GPUs are read through NVML (nvidia-ml-py), which torch.cuda.get_device_properties agrees with on
total memory; only without NVML is a child process asked through torch. CPU memory is the cgroup's
limit when there is one, else MemTotal.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from saeq.platform import pools
from saeq.platform.redis_client import connect
from saeq.specs.scheduling import WorkerAd

log = logging.getLogger("saeq.worker")

EVERY_S = 5.0
"""How often the ad is renewed."""
TTL_S = 20.0
"""How long an ad outlives its last renewal: a worker that died stops counting after this."""


def cpu_memory_bytes() -> int:
    """The memory this worker may use: its cgroup's limit (v2, then v1), else the machine's MemTotal."""
    total = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            value = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if value.isdigit() and 0 < int(value) < total:  # "max", or v1's huge "no limit" number
            return int(value)
    return total


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "cpu"


def _visible(n_devices: int) -> list[int] | None:
    """The NVML indices CUDA_VISIBLE_DEVICES leaves visible; None when it names UUIDs (read them all)."""
    value = os.environ.get("CUDA_VISIBLE_DEVICES")
    if value is None:
        return list(range(n_devices))
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not all(p.isdigit() for p in parts):
        return None
    return [int(p) for p in parts if int(p) < n_devices]


def cuda_devices() -> list[tuple[str, int]] | None:
    """(name, total memory) of each CUDA device this worker sees; None when it cannot tell."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no nvidia-ml-py, or no driver: torch can only find a device node's GPU
        return _cuda_devices_from_torch() if list(Path("/dev").glob("nvidia[0-9]*")) else None
    try:
        count = pynvml.nvmlDeviceGetCount()
        indices = _visible(count)
        if indices is None:
            return _cuda_devices_from_torch()
        out = []
        for i in indices:
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            out.append((name, int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)))
        return out
    finally:
        pynvml.nvmlShutdown()


_PROBE = (
    "import json, torch\n"
    "n = torch.cuda.device_count() if torch.cuda.is_available() else 0\n"
    "print(json.dumps([[torch.cuda.get_device_properties(i).name, torch.cuda.get_device_properties(i).total_memory]"
    " for i in range(n)]))\n"
)


def _cuda_devices_from_torch() -> list[tuple[str, int]] | None:
    # In a child process: CUDA initialised there stays there.
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=120, check=True)
        return [(str(name), int(total)) for name, total in json.loads(out.stdout.strip().splitlines()[-1])]
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
        log.warning("cannot read the CUDA devices: %s", e)
        return None


def worker_ads(queues: list[str], slots: int, device_setting: str) -> list[WorkerAd]:
    """This worker's ads, one per queue: CUDA unless `device_setting` is cpu or no device is seen."""
    gpus = cuda_devices() if device_setting != "cpu" else None
    worker, now = f"{socket.gethostname()}:{os.getpid()}", time.time()
    if gpus:
        # Several cards of one worker are alike in a pool; the smallest is what every job may count on.
        name, memory = min(gpus, key=lambda g: g[1])
        device, count = "cuda", len(gpus)
    else:
        if device_setting == "cuda":
            log.warning("SAEQ_DEVICE=cuda but no CUDA device is seen: advertising the CPU")
        device, name, memory, count = "cpu", cpu_name(), cpu_memory_bytes(), 1
    return [
        WorkerAd(
            worker=worker,
            queue=q,
            device=device,
            device_name=name,
            memory_bytes=memory,
            count=count,
            slots=max(1, slots),
            updated_at=now,
        )
        for q in queues
    ]


def advertise_all(r: redis.Redis, ads: list[WorkerAd]) -> None:
    """Renew every ad; a Redis away is logged and the next tick tries again (the TTL has slack)."""
    try:
        for ad in ads:
            pools.advertise(r, ad.model_copy(update={"updated_at": time.time()}), ttl_s=TTL_S)
    except redis.RedisError as e:
        log.warning("worker ad not renewed: %s", e)


def advertise_step(redis_url: str, device_setting: str):
    """A consumer bootstep that advertises the worker's queues every EVERY_S from the event loop
    (like saeq_worker.liveness's), and withdraws them when the consumer stops."""
    from celery import bootsteps

    class Advertise(bootsteps.StartStopStep):
        def __init__(self, consumer, **kwargs):
            self.tref = None
            self.ads: list[WorkerAd] = []
            self.r = connect(redis_url, retry_s=2.0)  # a tick must not hold the event loop long
            super().__init__(consumer, **kwargs)

        def start(self, consumer) -> None:
            amqp_queues = consumer.app.amqp.queues  # -Q's queues; without -Q, every declared one
            queues = sorted(amqp_queues.consume_from or amqp_queues)
            slots = int(getattr(consumer.controller, "concurrency", 1) or 1)
            self.ads = worker_ads(queues, slots, device_setting)
            for ad in self.ads:
                log.info(
                    "advertising queue %s: %d x %s (%.1f GiB), %d slots",
                    ad.queue,
                    ad.count,
                    ad.device_name,
                    ad.memory_bytes / 2**30,
                    ad.slots,
                )
            advertise_all(self.r, self.ads)
            self.tref = consumer.timer.call_repeatedly(EVERY_S, advertise_all, (self.r, self.ads), priority=10)

        def stop(self, consumer) -> None:
            if self.tref is not None:
                self.tref.cancel()
                self.tref = None
            for ad in self.ads:
                try:
                    pools.withdraw(self.r, ad.worker, ad.queue)
                except redis.RedisError as e:  # it expires after TTL_S anyway
                    log.warning("worker ad not withdrawn: %s", e)
            self.ads = []

        shutdown = stop

    return Advertise
