"""Everything around a job's real work: claim, lease and heartbeats, cancel flag, time limit,
progress, error mapping, finishing, and starting the jobs that waited for it."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from pydantic import BaseModel

from saeq import keys
from saeq.errors import Cancelled, JobError, OutOfMemory, Preempted, TimeLimitExceeded
from saeq.platform.fair_share import UsageClock
from saeq.platform.registry import Registry, Send, after_finish, time_limit_message
from saeq.platform.scheduler import schedule
from saeq.platform.store import ObjectStore
from saeq.platform.teams import TeamQuota
from saeq.specs import parse_spec
from saeq.specs.manifests import manifest_json
from saeq_worker.memory_peak import measured
from saeq_worker.metrics import CountingStore, JobMeter, recorded_tokens

log = logging.getLogger("saeq.worker")


class LeaseLost(Exception):
    """Another worker took the job over (this one was presumed dead); stop without writing."""


@dataclass
class RunningJob:
    id: str
    spec: Any
    attempt: int
    record: dict
    registry: Registry
    store: ObjectStore
    device: str
    _stop: threading.Event = field(default_factory=threading.Event)
    _lease_lost: threading.Event = field(default_factory=threading.Event)
    _done: threading.Event = field(default_factory=threading.Event)
    _yield: threading.Event = field(default_factory=threading.Event)
    yield_reason: str = ""
    """Why the job was asked to yield its worker (a preemption), once it was."""
    _last_report: float = 0.0
    on_report: Callable[[dict], None] = lambda figures: None
    """Sees every report's figures, throttled or not (the worker's metrics)."""
    on_beat: Callable[[], None] = lambda: None
    """Called at every heartbeat (the worker's per-team device-seconds)."""

    @property
    def devices(self) -> list[str]:
        """The devices the job computes on, `spec.gpus` of them: this pod's CUDA devices 0..N-1,
        or N times the CPU (data-parallel gloo ranks on a CPU worker); [device] for one."""
        n = getattr(self.spec, "gpus", 1)
        if n > 1 and self.device.startswith("cuda"):
            return [f"cuda:{i}" for i in range(n)]
        return [self.device] * n

    def should_stop(self) -> bool:
        """Stop at the next check: cancelled, lease lost, past the time limit, or asked to yield."""
        return self.should_abort() or self._yield.is_set()

    def should_abort(self) -> bool:
        """Stop now, without waiting for a safe point: what should_stop says but a yield."""
        return self._stop.is_set() or self._lease_lost.is_set() or self.over_time() is not None

    def should_yield(self) -> bool:
        """Asked to yield the worker (saeq.platform.job_preempt): save state at the next safe
        point, then raise Preempted (check() does)."""
        return self._yield.is_set()

    def ask_to_yield(self, reason: str) -> None:
        self.yield_reason = self.yield_reason or reason
        self._yield.set()

    def check(self, **figures: float) -> None:
        """Raise what stops the job now, if anything: a lost lease, a cancel, the time limit, then a
        yield (Preempted, with `figures`: how far the job got, for its `preempted` event)."""
        if self._lease_lost.is_set():
            raise LeaseLost(self.id)
        if self._stop.is_set():
            raise Cancelled("cancelled by request")
        if (elapsed := self.over_time()) is not None:
            raise TimeLimitExceeded(time_limit_message(self.record["time_limit_s"], elapsed))
        if self._yield.is_set():
            raise Preempted(self.yield_reason, **figures)

    def over_time(self) -> float | None:
        """Seconds since the job first started (on any attempt) once past its time limit, else None."""
        limit, started = self.record.get("time_limit_s"), self.record.get("started_at")
        if not limit or not started:
            return None
        elapsed = time.time() - started  # wall clock: started_at may come from another machine
        return elapsed if elapsed > limit else None

    def report(
        self,
        fraction: float,
        phase: str,
        message: str = "",
        *,
        force: bool = False,
        more: Mapping[str, float] | None = None,
        **figures: float,
    ) -> None:
        """Progress for `GET /v1/jobs/{id}`; throttled, so callers may report every batch. `more`:
        figures whose names are only known at run time (after those named)."""
        figures = {**figures, **(more or {})}
        self.on_report(figures)
        now = time.monotonic()
        if not force and now - self._last_report < 0.5:
            return
        self._last_report = now
        try:
            self.registry.report(
                self.id,
                {"fraction": max(0.0, min(1.0, fraction)), "phase": phase, "message": message, "figures": figures},
            )
        except redis.RedisError as e:  # Redis away longer than the registry retries: work on
            log.warning("job %s: progress not recorded: %s", self.id, e)

    @property
    def team(self) -> str:
        return self.record.get("team") or "default"

    def quota(self) -> TeamQuota:
        """The per-job limits of the job's team, as they stand now."""
        return self.registry.teams.quota(self.team)

    def publish(self, manifest: BaseModel) -> str:
        """Write the job's manifest (saeq.specs.manifests), the last object it writes: readers take
        a manifest as the sign that every object it names is complete. Write-once (the store
        refuses a second); -> its key, for `body` to return."""
        key = keys.manifest(self.id)
        self.store.put(key, manifest_json(manifest), content_type="application/json")
        return key

    def event(self, phase: str, message: str, **figures: Any) -> None:
        try:
            self.registry.event(self.id, phase, message, **figures)
        except redis.RedisError as e:
            log.warning("job %s: event %r not recorded: %s", self.id, phase, e)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_job(
    registry: Registry,
    store: ObjectStore,
    job_id: str,
    dispatch_id: str,
    *,
    body: Callable[[RunningJob], str],
    send: Send,
    device: str,
    heartbeat_s: float,
    heartbeat_file: str | None = None,
) -> None:
    """Claim the job, run `body` (which returns the manifest key), and record how it ended."""
    claim = registry.claim(job_id, dispatch_id, worker_name())
    deadline = time.monotonic() + registry.lease_ttl_ms / 1000 + 2
    while claim.action == "busy" and time.monotonic() < deadline:
        # Redelivered after our own process died: its lease runs out within the TTL.
        time.sleep(0.5)
        claim = registry.claim(job_id, dispatch_id, worker_name())
    if claim.action != "run":
        log.info("job %s not run: %s", job_id, claim.reason)
        if claim.action == "skip":
            after_finish(registry, job_id, send)
        return

    record = registry.get(job_id)
    try:
        if record is None:  # gone since the claim: recorded as failed, as a spec that does not parse
            raise LookupError(f"job {job_id} has no record")
        spec = parse_spec(record["spec"])
    except Exception as e:  # stored by the API, so this means a version mismatch
        registry.finish(job_id, claim.token, "failed", error=_error("invalid_spec", str(e)))
        after_finish(registry, job_id, send)
        return
    if claim.attempt > 1 and store.exists(keys.manifest(job_id)):
        # An earlier attempt published its output and died before recording it: the job is done.
        log.info("job %s: found the manifest of an earlier attempt", job_id)
        if registry.finish(job_id, claim.token, "succeeded", manifest_key=keys.manifest(job_id)):
            after_finish(registry, job_id, send)
        return
    meter = JobMeter(
        record["kind"],
        record.get("team") or "default",
        device=device,
        n_devices=getattr(spec, "gpus", 1),
        tokens_before=recorded_tokens(record),
    )
    job = RunningJob(
        job_id,
        spec,
        claim.attempt,
        record,
        registry,
        CountingStore(store, meter.wrote),
        device,
        on_report=meter.progress,
        on_beat=meter.beat,
    )
    if record.get("preempt"):  # asked to yield before it was claimed: it yields at once
        job.ask_to_yield(record["preempt"])
    beat = threading.Thread(
        target=_heartbeat,
        args=(job, claim.token, heartbeat_s, heartbeat_file),
        daemon=True,
        name=f"heartbeat-{job_id[:8]}",
    )
    beat.start()
    state, error, manifest_key = "failed", None, None
    preempted: Preempted | None = None
    try:
        job.check()  # a job sent again after its time limit passed does not start
        manifest_key = measured(body)(job)  # its progress gets `memory`: estimated and measured peak
        state = "succeeded"
    except LeaseLost:
        log.warning("job %s: lease lost, another worker owns it now", job_id)
        state = "lease_lost"
        return
    except Preempted as e:  # saved its state at a safe point: queued again below
        state, preempted = "preempted", e
    except Cancelled as e:
        if not job._stop.is_set() and (elapsed := job.over_time()) is not None:
            # The job function stopped at should_stop(): the time limit, not a cancel, said so.
            error = _error(TimeLimitExceeded.code, time_limit_message(record["time_limit_s"], elapsed))
        elif not job._stop.is_set() and job.should_yield():
            # Stopped at should_stop() with no safe point of its own: it redoes from its last saved state.
            state, preempted = "preempted", Preempted(job.yield_reason)
        else:
            state, error = "cancelled", _error("cancelled", e.message)
    except JobError as e:
        error = _error(e.code, e.message, e.field)
    except MemoryError:
        error = _error("out_of_memory", "the worker ran out of host memory")
    except Exception as e:
        if type(e).__name__ == "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch
            error = _error(OutOfMemory.code, f"out of GPU memory: {e}")
        else:
            log.error("job %s crashed:\n%s", job_id, traceback.format_exc())
            error = _error("internal", f"{type(e).__name__}: {e}")
    finally:
        job._done.set()
        beat.join(timeout=5)
        meter.finished(state)
    if preempted is not None:
        _requeue(job, claim.token, preempted, send)
        return
    if not registry.finish(job_id, claim.token, state, error=error, manifest_key=manifest_key):
        log.warning("job %s: lease lost before finishing; result left to the new owner", job_id)
        return
    after_finish(registry, job_id, send)


def _requeue(job: RunningJob, token: str, preempted: Preempted, send: Send) -> None:
    """The job yielded with its state saved: queue it again (saeq.platform.job_preempt), and give
    the freed slot to the best waiting job, which may be this one again."""
    reason = job.yield_reason or preempted.reason
    outcome = job.registry.requeue_preempted(job.id, token, reason, **preempted.figures)
    log.info("job %s yielded (%s): %s", job.id, reason, outcome or "lease lost")
    if outcome is None:
        return  # another worker owns it now
    if outcome != "queued":  # cancelled or past its time limit meanwhile: an end, as any other
        after_finish(job.registry, job.id, send)
        return
    schedule(job.registry, send)  # fair share across teams: the freed capacity to the best waiting job


def _preempt_requested(job: RunningJob) -> str | None:
    try:
        return job.registry.preempt_requested(job.id)
    except redis.RedisError as e:  # the next heartbeat asks again
        log.warning("preempt flag of %s not read: %s", job.id, e)
        return None


def _heartbeat(job: RunningJob, token: str, every_s: float, heartbeat_file: str | None) -> None:
    # The team's fair-share usage: elapsed seconds x the job's devices, at each beat and at the
    # end (before run_job ends the job and the scheduler gives its slot away).
    usage = UsageClock(job.registry.r, job.team, len(job.devices))
    try:
        _beat(job, token, every_s, heartbeat_file, usage)
    finally:
        try:
            usage.close()
        except redis.RedisError as e:
            log.warning("usage of %s not recorded: %s", job.id, e)


def _beat(job: RunningJob, token: str, every_s: float, heartbeat_file: str | None, usage: UsageClock) -> None:
    while not job._done.wait(every_s):
        job.on_beat()  # the device is held whether or not Redis answers
        with contextlib.suppress(redis.RedisError):  # counted at the next beat
            usage.tick()
        try:
            owner, stop = job.registry.heartbeat(job.id, token)
        except Exception as e:  # Redis briefly away: keep working, the lease TTL has slack
            log.warning("heartbeat for %s failed: %s", job.id, e)
            continue
        if not owner:
            job._lease_lost.set()
            return
        if stop:  # a cancel, or the reaper ended the job: it keeps its slot until we let go
            job._stop.set()  # keep beating: the job still has to stop and record it
        elif not job.should_yield() and (reason := _preempt_requested(job)) is not None:
            job.ask_to_yield(reason)
        if heartbeat_file:
            Path(heartbeat_file).touch()


def _error(code: str, message: str, field: str | None = None) -> dict:
    return {"code": code, "field": field, "message": message}
