"""How many threads torch computes with: the CPUs this worker may really use (its cgroup's CPU quota,
its affinity), not the node's core count, which oversubscribes a container limited to 4 CPUs of a
64-core node. `SAEQ_TORCH_THREADS` overrides."""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path

log = logging.getLogger("saeq.worker")

CGROUP_ROOT = Path("/sys/fs/cgroup")
THREADS_ENV = "SAEQ_TORCH_THREADS"


def _text(source: str | Path | None) -> str | None:
    """A cgroup file's content: `source` itself when text, read when a Path (None if unreadable)."""
    if source is None or isinstance(source, str):
        return source
    try:
        return source.read_text()
    except OSError:
        return None


def quota_cpus(quota: float, period: float) -> int | None:
    """CPUs a CFS quota allows, rounded down (at least 1): a thread more than the quota gets the
    whole group throttled each period, which stalls torch's lock-step parallel loops worse than
    a core left idle. None when there is no limit."""
    if quota <= 0 or period <= 0:
        return None
    return max(1, int(quota // period))


def cpu_quota(
    *,
    cpu_max: str | Path | None = None,
    cfs_quota_us: str | Path | None = None,
    cfs_period_us: str | Path | None = None,
    affinity: int | None = None,
) -> int | None:
    """CPUs this process may use: the least of cgroup v2's `cpu.max` ("max 100000" is no limit,
    "400000 100000" is 4), cgroup v1's cfs_quota_us / cfs_period_us (-1: no limit) and the
    affinity's CPU count. Each file is given as its text or a Path; None when nothing limits."""
    limits: list[int] = []
    if (v2 := _text(cpu_max)) is not None:
        fields = v2.split()
        if len(fields) == 2 and fields[0] != "max" and (n := quota_cpus(float(fields[0]), float(fields[1]))):
            limits.append(n)
    q, p = _text(cfs_quota_us), _text(cfs_period_us)
    if q is not None and p is not None and (n := quota_cpus(float(q), float(p))):
        limits.append(n)
    if affinity is not None:
        limits.append(max(1, affinity))
    return min(limits) if limits else None


def parse_threads(value: str | int | None) -> int | None:
    """`SAEQ_TORCH_THREADS` as a count (None: unset or empty); ValueError naming it when it is not
    a positive whole number."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ValueError(f"{THREADS_ENV} must be a positive whole number of threads, got {value!r}")
    return n


def cgroup_cpu_dirs(proc_self_cgroup: str, root: Path = CGROUP_ROOT) -> list[tuple[Path, int]]:
    """(directory, cgroup version) of this process's CPU cgroup and each ancestor's, from
    /proc/self/cgroup's text: a parent's limit binds its children as well. A container that sees
    only its own cgroup finds it at the mount's root, the last ancestor."""
    found = []
    for line in proc_self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, rel = parts
        if controllers == "":  # v2: "0::/path"
            base, version = root, 2
        elif "cpu" in controllers.split(","):  # v1: "4:cpu,cpuacct:/path"
            base = next((root / d for d in (controllers, "cpu,cpuacct", "cpu") if (root / d).is_dir()), None)
            if base is None:
                continue
            version = 1
        else:
            continue
        rel_path = Path(rel.strip().lstrip("/"))
        found += [(base / d, version) for d in (rel_path, *rel_path.parents)]
    return found


def available_cpus() -> int:
    """CPUs this process may use on this machine: the least of the core count, the affinity and
    every cgroup quota above it."""
    limits = [os.cpu_count() or 1]
    if hasattr(os, "sched_getaffinity"):
        limits.append(len(os.sched_getaffinity(0)))
    try:
        dirs = cgroup_cpu_dirs(Path("/proc/self/cgroup").read_text())
    except OSError:
        dirs = []
    for d, version in dirs:
        try:
            if version == 2:
                n = cpu_quota(cpu_max=d / "cpu.max")
            else:
                n = cpu_quota(cfs_quota_us=d / "cpu.cfs_quota_us", cfs_period_us=d / "cpu.cfs_period_us")
        except ValueError as e:  # a file we cannot read limits nothing we know of
            log.warning("cannot parse the CPU quota in %s: %s", d, e)
            continue
        if n is not None:
            limits.append(n)
    return min(limits)


def torch_threads(override: str | int | None) -> tuple[int, str]:
    """(threads, why): the override when given, else the CPUs available."""
    n = parse_threads(override)
    if n is not None:
        return n, THREADS_ENV
    return available_cpus(), "the CPU quota and affinity"


@lru_cache(maxsize=1)
def configure_torch(override: str | int | None) -> int:
    """Once per process, before its first job computes: torch's intra- and inter-op thread counts."""
    import torch

    n, why = torch_threads(override)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(n)
    except RuntimeError:  # set once per process, before any inter-op work: someone was first
        pass
    log.info("torch threads: %d intra-op, %d inter-op (from %s)", n, torch.get_num_interop_threads(), why)
    return n
