"""A worker shutting down (SIGTERM: a node drain, a spot reclaim, a rolling update) asks the jobs
its pool computes to yield, the same path as a scheduler's preemption (saeq.platform.job_preempt):
each saves its state at its next safe point, queues itself again and its task ends (its message
acked), so another worker resumes it and the drain loses no work.

Only the worker's main process gets the signal (Kubernetes signals PID 1; Celery's pool children
do not take part in a warm shutdown until their task ends). Each running job's record names the
process computing it (host:pid of a pool child), so the main process asks the jobs of its own
children, read from /proc.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from saeq.platform.registry import Registry

log = logging.getLogger("saeq.worker")

SHUTDOWN_REASON = "worker shutting down"


def child_pids(parent: int) -> set[int]:
    """The processes whose parent is `parent` (Linux /proc; empty elsewhere)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "(comm)", which may hold spaces
        except (OSError, IndexError):
            continue  # exited meanwhile
        if int(fields[1]) == parent:  # fields: state, ppid, ...
            children.add(int(stat.parent.name))
    return children


def preempt_pool_jobs(registry: Registry, *, reason: str = SHUTDOWN_REASON) -> list[str]:
    """Ask every job this process's pool children compute to yield -> their ids."""
    host = socket.gethostname()
    workers = {f"{host}:{pid}" for pid in child_pids(os.getpid())}
    # One script for all of them: the grace period counts from the signal.
    asked = registry.request_preempts([(job_id, reason) for job_id in registry.running_on(workers)])
    log.info("shutting down: asked %d running job(s) to yield: %s", len(asked), asked)
    return asked
