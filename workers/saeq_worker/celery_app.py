"""The workers' Celery app. Start with: celery -A saeq_worker.celery_app worker -Q gpu,cpu

The parent process never imports torch, so CUDA is never initialised before the pool forks;
each task imports it in the child that runs it. The parent serves the pool's Prometheus metrics
(saeq_worker.metrics) and touches the liveness file (saeq_worker.liveness).
"""

from __future__ import annotations

import sys

from celery.signals import worker_init, worker_process_shutdown, worker_shutdown

from saeq.config import InsecureSettings
from saeq.dispatch import make_celery
from saeq_worker import liveness, metrics
from saeq_worker.settings import WorkerSettings

settings = WorkerSettings()
app = make_celery(settings)
app.conf.update(
    worker_max_tasks_per_child=50,  # bounds memory creep from model caches across many jobs
    worker_cancel_long_running_tasks_on_connection_loss=False,
)
app.autodiscover_tasks(["saeq_worker"], related_name="tasks", force=True)
if settings.heartbeat_file:
    app.steps["consumer"].add(liveness.heartbeat_step(settings.heartbeat_file, settings.heartbeat_s))


@worker_init.connect
def _refuse_insecure_settings(**_):
    # SystemExit: Celery logs and ignores a receiver's ordinary exceptions, and the worker would run.
    try:
        settings.require_signing_key("worker")
    except InsecureSettings as e:
        raise SystemExit(str(e)) from None


@worker_init.connect
def _no_cuda_in_parent(**_):
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        raise RuntimeError("CUDA was initialised in the worker's parent process; forked children "
                           "would inherit a broken CUDA context")


@worker_init.connect
def _serve_metrics(sender, **_):
    if settings.metrics_port:  # before the pool forks: children inherit the multiprocess dir
        metrics.serve(sender, settings.metrics_port, settings.metrics_addr)


@worker_process_shutdown.connect
def _child_exited(pid, **_):
    metrics.process_died(pid)


@worker_shutdown.connect
def _remove_metrics_dir(**_):
    metrics.cleanup()
