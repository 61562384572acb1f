"""One thin Celery task per job kind: look the job up, run saeq's job function, record the end.

Tasks take ids, never objects; the spec is re-read from the registry with the API's own class.
"""

from __future__ import annotations

from functools import lru_cache

from saeq.config import open_store
from saeq.dispatch import sender, task_name
from saeq.registry import Registry
from saeq_worker.celery_app import app, settings
from saeq_worker.running import run_job


@lru_cache(maxsize=1)
def _registry() -> Registry:
    # Built lazily in the child process: connections must not cross a fork.
    return Registry.from_url(settings.redis_url, max_attempts=settings.max_attempts,
                             lease_ttl_s=settings.lease_ttl_s)


@lru_cache(maxsize=1)
def _store():
    return open_store(settings)


def _device() -> str:
    if settings.device != "auto":
        return settings.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _run(job_id: str, dispatch_id: str, body) -> None:
    run_job(_registry(), _store(), job_id, dispatch_id, body=body, send=sender(app),
            device=_device(), heartbeat_s=settings.heartbeat_s, heartbeat_file=settings.heartbeat_file)


@app.task(name=task_name("harvest"))
def harvest(job_id: str, dispatch_id: str) -> None:
    from saeq_worker.harvest import run_harvest

    _run(job_id, dispatch_id, lambda job: run_harvest(job, cache_dir=settings.cache_dir))


@app.task(name=task_name("train"))
def train(job_id: str, dispatch_id: str) -> None:
    from saeq_worker.train import run_train

    _run(job_id, dispatch_id, run_train)


@app.task(name=task_name("evaluate"))
def evaluate(job_id: str, dispatch_id: str) -> None:
    from saeq_worker.evaluate import run_evaluate

    _run(job_id, dispatch_id, lambda job: run_evaluate(job, cache_dir=settings.cache_dir))


@app.task(name=task_name("label"))
def label(job_id: str, dispatch_id: str) -> None:
    from saeq_worker.label import run_label

    _run(job_id, dispatch_id, lambda job: run_label(job, cache_dir=settings.cache_dir))
