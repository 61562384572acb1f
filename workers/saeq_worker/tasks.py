"""One thin Celery task per job kind: look the job up, run saeq's job function, record the end.

Tasks take ids, never objects; the spec is re-read from the registry with the API's own class.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache

from celery.signals import task_prerun
from pydantic import BaseModel

from saeq.platform.admission import check_admissible, check_local_paths
from saeq.platform.dispatch import KIND_QUEUE, LIVE_TASK, sender, task_name
from saeq.platform.registry import Registry
from saeq.platform.settings import open_store
from saeq_worker import threads
from saeq_worker.celery_app import app, settings
from saeq_worker.running import run_job

log = logging.getLogger("saeq.worker")


@lru_cache(maxsize=1)
def _registry() -> Registry:
    # Built lazily in the child process: connections must not cross a fork.
    return Registry.from_url(
        settings.redis_url,
        max_attempts=settings.max_attempts,
        lease_ttl_s=settings.lease_ttl_s,
        retry_s=settings.redis_retry_s,
        spec_store=_store(),
    )  # large specs live there


@lru_cache(maxsize=1)
def _store():
    return open_store(settings)


def _device() -> str:
    threads.configure_torch(settings.torch_threads)  # once per process, before its first job computes
    if settings.device != "auto":
        return settings.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@task_prerun.connect
def _received(sender=None, args=(), **_) -> None:
    # Before the task imports torch (seconds, up to tens on a busy node) and claims the job: tells
    # the reaper this job's message reached a worker, so it is not sent again meanwhile.
    if sender is not None and sender.name != LIVE_TASK and args:
        _registry().received(args[0])


def _run(job_id: str, dispatch_id: str, body) -> None:
    def admitted_body(job) -> str:
        # The API checked at submit, but this worker's own settings decide what it loads and calls.
        check_admissible(job.spec, llm_endpoints=settings.llm_endpoints, local_path_roots=settings.local_path_roots)
        return body(job)

    run_job(
        _registry(),
        _store(),
        job_id,
        dispatch_id,
        body=admitted_body,
        send=sender(app),
        device=_device(),
        heartbeat_s=settings.heartbeat_s,
        heartbeat_file=settings.heartbeat_file,
    )


@app.task(name=task_name("harvest"))
def harvest(job_id: str, dispatch_id: str) -> None:
    from saeq_worker.harvest import run_harvest

    def send_slice(job_id: str, index: int) -> None:
        app.send_task(task_name("harvest_slice"), args=[job_id, index], queue=KIND_QUEUE["harvest"])

    _run(job_id, dispatch_id, lambda job: run_harvest(job, cache_dir=settings.cache_dir, send_slice=send_slice))


@app.task(name=task_name("harvest_slice"))
def harvest_slice(job_id: str, index: int) -> None:
    """One slice of a split harvest (saeq_worker.harvest_split); the job's own task merges them."""
    from saeq_worker.harvest_split import run_slice_task

    run_slice_task(
        _registry(),
        _store(),
        job_id,
        index,
        device=_device(),
        cache_dir=settings.cache_dir,
        admit=lambda spec: check_admissible(
            spec, llm_endpoints=settings.llm_endpoints, local_path_roots=settings.local_path_roots
        ),
    )


@app.task(name=task_name("train"))
def train(job_id: str, dispatch_id: str) -> None:
    from saeq_worker.train import run_train

    _run(job_id, dispatch_id, lambda job: run_train(job, shard_cache=_shard_cache()))


@lru_cache(maxsize=1)
def _shard_cache():
    from saeq_worker import metrics
    from saeq_worker.shard_reads import node_shard_cache

    return node_shard_cache(settings, on_event=metrics.shard_cache_event)


@app.task(name=task_name("evaluate"))
def evaluate(job_id: str, dispatch_id: str) -> None:
    from saeq_worker.evaluate import run_evaluate

    _run(
        job_id,
        dispatch_id,
        lambda job: run_evaluate(job, cache_dir=settings.cache_dir, llm_endpoints=settings.llm_endpoints),
    )


@app.task(name=task_name("label"))
def label(job_id: str, dispatch_id: str) -> None:
    from saeq_worker.label import run_label

    _run(
        job_id,
        dispatch_id,
        lambda job: run_label(job, cache_dir=settings.cache_dir, llm_endpoints=settings.llm_endpoints),
    )


@app.task(name=task_name("steer"))
def steer(job_id: str, dispatch_id: str) -> None:
    from saeq_worker.steer import run_steer

    _run(
        job_id,
        dispatch_id,
        lambda job: run_steer(job, cache_dir=settings.cache_dir, llm_endpoints=settings.llm_endpoints),
    )


@app.task(name=LIVE_TASK)
def live(request_id: str = "", *_: object) -> None:
    """Answer the fairest waiting live request (steer, label search, inspect, contrast): this message announces that
    `request_id` was queued, but the workers serve the teams in turn (saeq.platform.live), so it may answer
    another team's first. The reply goes to a Redis list the API waits on. The request's slot is
    this worker's to free once taken: its caller may have left, and the team must not start another
    while this one still computes."""
    import saeq_worker.steer_live  # noqa: F401  torch is imported before a request is taken, not while it waits

    requests = _live_requests()
    entry = requests.next_request()
    if entry is None:  # the API withdrew it, or an earlier message served it
        return
    try:
        _serve_live(requests, entry)
    finally:
        requests.release(entry["team"], entry["id"])


def _serve_live(requests, entry: dict) -> None:
    from saeq.errors import Cancelled
    from saeq.specs import LabelSearch
    from saeq_worker.steer_labels import search_labels
    from saeq_worker.steer_live import error_reply

    op, request_id, payload = entry["op"], entry["id"], entry["payload"]
    if requests.cancelled(entry):
        log.info("live %s request %s of team %s skipped: its caller gave up", op, request_id, entry["team"])
        requests.record(op, "skipped")
        return
    outcome, check = "ok", requests.check_for(entry)
    try:
        if op == "search_labels":
            reply = search_labels(LabelSearch.model_validate(payload), _store(), device=_device(), check=check)
        elif op in ("steer", "inspect", "contrast"):
            request_type, serve = _loaded_model_op(op)
            asked = request_type.model_validate(payload)
            check_local_paths(asked, settings.local_path_roots)  # before a model or SAE is loaded
            reply = serve(
                asked,
                _store(),
                device=_device(),
                cache_dir=settings.cache_dir,
                max_prompt_tokens=entry["max_prompt_tokens"],
                check=check,
            )
        else:
            raise ValueError(f"unknown live operation {op!r}")
    except Cancelled:
        log.info("live %s request %s of team %s stopped: its caller gave up", op, request_id, entry["team"])
        requests.record(op, "stopped")
        return
    except Exception as e:  # every failure goes back to the caller, not only to the log
        log.exception("live %s request %s failed", op, request_id)
        reply, outcome = error_reply(e), "error"
    requests.answer(entry, reply, outcome)


def _loaded_model_op(op: str) -> tuple[type[BaseModel], Callable[..., dict]]:
    """(request type, serve function) of a live op on the model and SAE a worker keeps loaded; the
    three take the same arguments: the request, the store, the device, the model cache, the team's
    prompt cap and the caller-left check."""
    if op == "steer":
        from saeq.specs import SteerRequest
        from saeq_worker.steer_live import serve_steer

        return SteerRequest, serve_steer
    if op == "inspect":
        from saeq.specs.inspect import InspectRequest
        from saeq_worker.inspect import serve_inspect

        return InspectRequest, serve_inspect
    from saeq.specs.contrast import ContrastRequest
    from saeq_worker.contrast import serve_contrast

    return ContrastRequest, serve_contrast


@lru_cache(maxsize=1)
def _live_requests():
    from saeq.platform.live import LiveRequests

    return LiveRequests(_registry().r)
