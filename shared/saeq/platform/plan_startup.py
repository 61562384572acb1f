"""A cost plan's start-up term: what a job spends before its first token, from the start-ups
finished jobs recorded (saeq_worker.harvest). A job that loads its model into the worker process
(a cold start) pays seconds a job finding it loaded (a warm start) does not, and runs slower
after; the plan predicts which one the job will be, takes its rate from jobs of that start, and
keeps the start-up out of the rate per token. No torch.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from saeq.platform import pools


class Started(Protocol):
    """What a finished job recorded about its start (saeq.platform.plans.Sample has it)."""

    @property
    def worker(self) -> str | None: ...
    @property
    def startup_s(self) -> float | None: ...
    @property
    def model_load_s(self) -> float | None: ...
    @property
    def cold(self) -> bool | None: ...


S = TypeVar("S", bound=Started)


@dataclass(frozen=True)
class Startup(Generic[S]):
    samples: list[S]
    """The jobs the rate after start-up comes from: those of the predicted start where there are any."""
    seconds: float
    cold: bool | None
    """Whether the plan expects the job to load its model; None for a kind that loads none."""
    text: str


def live_hosts(r, queue: str) -> frozenset[str]:
    """Hosts with a live worker ad for `queue` (saeq.platform.pools; one read, which also drops
    the expired ads)."""
    return frozenset(_host(ad.worker) for ad in pools.live_workers(r) if ad.queue == queue)


def _host(worker: str | None) -> str:
    return (worker or "").rsplit(":", 1)[0]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def predict_startup(chosen: Sequence[S], newest: Started, hosts: frozenset[str]) -> Startup[S] | None:
    """The start-up of the next job like `chosen`, and the jobs to take its rate from; None when
    none of them recorded a start-up. Warm is predicted when `newest` (the newest job of the model,
    any team's) ran on a host that still has a live worker of the queue: a worker keeps its models
    loaded between jobs. A cold job is slower than a warm one past its model's load too (the
    tokenizer's and the allocator's caches fill as it goes), so the rate and start-up come from
    the jobs of the predicted start; with none of them, from the others, the model load added to
    or taken from their start-up. A guess: the job may go to another worker of the pool, and a
    worker's process is replaced after worker_max_tasks_per_child jobs."""
    recorded = [s for s in chosen if s.startup_s is not None]
    if not recorded:
        return None
    if not all(s.cold is not None and s.model_load_s is not None for s in recorded):  # a kind that loads no model
        seconds = statistics.median(s.startup_s or 0.0 for s in recorded)
        return Startup(recorded, seconds, None, f"start-up {seconds:,.1f} s (median of {len(recorded)})")
    cold = [s for s in recorded if s.cold]
    warm = [s for s in recorded if not s.cold]
    seen = f"{_plural(len(cold), 'cold start')} and {len(warm)} warm"
    host = _host(newest.worker)
    if host and host in hosts:
        why = f"the newest ran on {host}, which has a live worker, so its model is likely loaded"
        if warm:
            seconds = statistics.median(s.startup_s or 0.0 for s in warm)
            text = f"{seen}; predicted warm ({why}): rate and start-up {seconds:,.1f} s from the warm"
            return Startup(warm, seconds, False, text)
        seconds = statistics.median(max(0.0, (s.startup_s or 0.0) - (s.model_load_s or 0.0)) for s in cold)
        text = (
            f"{seen}; predicted warm ({why}): start-up {seconds:,.1f} s, the cold starts' less their model "
            "load, and their rate: from cold starts only, a warm run is likely faster"
        )
        return Startup(cold, seconds, False, text)
    why = f"no live worker on {host}, where the newest ran" if host else "no worker named"
    if cold:
        seconds = statistics.median(s.startup_s or 0.0 for s in cold)
        return Startup(
            cold, seconds, True, f"{seen}; predicted cold ({why}): rate and start-up {seconds:,.1f} s from the cold"
        )
    seconds = statistics.median(s.startup_s or 0.0 for s in warm)
    text = (
        f"{seen}; predicted cold ({why}): start-up {seconds:,.1f} s and rate from warm starts only, no model load seen"
    )
    return Startup(warm, seconds, True, text)
