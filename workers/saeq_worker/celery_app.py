"""The workers' Celery app. Start with: celery -A saeq_worker.celery_app worker -Q gpu (-Q steer: live requests)

The parent process never imports torch, so CUDA is never initialised before the pool forks;
each task imports it in the child that runs it. The parent serves the pool's Prometheus metrics
(saeq_worker.metrics) and touches the liveness file (saeq_worker.liveness).

The worker runs in an empty private working directory it makes at start: transformers and datasets
look a name up relative to the working directory before they ask the hub, so there must be nothing
there to find (saeq.ml.models and saeq.ml.corpus never hand them a relative name either).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile

from celery.signals import (
    task_postrun,
    task_prerun,
    worker_init,
    worker_process_shutdown,
    worker_shutdown,
    worker_shutting_down,
)

from saeq.platform.dispatch import make_celery
from saeq.platform.settings import InsecureSettings
from saeq.specs import load_plugins
from saeq_worker import liveness, metrics, pod_cost, pools, threads
from saeq_worker.settings import WorkerSettings

log = logging.getLogger("saeq.worker")
load_plugins()  # SAEQ_PLUGINS: SAE architectures, the same the API loaded
settings = WorkerSettings()
# A relative path the operator gave means the directory the worker was started in, not the private
# one it moves to (_private_working_directory).
settings.cache_dir = os.path.abspath(settings.cache_dir)
if settings.shard_cache_dir:
    settings.shard_cache_dir = os.path.abspath(settings.shard_cache_dir)
if settings.heartbeat_file:
    settings.heartbeat_file = os.path.abspath(settings.heartbeat_file)
if settings.store.startswith("file://"):
    settings.store = "file://" + os.path.abspath(settings.store[len("file://") :])
for _var in ("PROMETHEUS_MULTIPROC_DIR", "HF_HOME", "HF_HUB_CACHE", "HF_DATASETS_CACHE"):
    if os.environ.get(_var):
        os.environ[_var] = os.path.abspath(os.environ[_var])
app = make_celery(settings)
app.conf.update(
    # SAEQ_WORKER_MAX_TASKS_PER_CHILD; 0 (the steer worker): never recycle, None is Celery's "no limit".
    worker_max_tasks_per_child=settings.worker_max_tasks_per_child or None,
    worker_cancel_long_running_tasks_on_connection_loss=False,
)
app.autodiscover_tasks(["saeq_worker"], related_name="tasks", force=True)
if settings.heartbeat_file:
    # celery's stubs type Celery.steps as optional; it is a defaultdict(set) from the start.
    app.steps["consumer"].add(  # pyright: ignore[reportOptionalSubscript]
        liveness.heartbeat_step(settings.heartbeat_file, settings.heartbeat_s)
    )
# What this worker offers (device, memory, slots per queue), renewed with a TTL (saeq_worker.pools).
app.steps["consumer"].add(  # pyright: ignore[reportOptionalSubscript]
    pools.advertise_step(settings.redis_url, settings.device)
)


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
        # SystemExit, as above: a RuntimeError would be logged and the worker would start anyway.
        raise SystemExit(
            "CUDA was initialised in the worker's parent process; forked children would inherit a broken CUDA context"
        )


@worker_init.connect
def _torch_threads(**_):
    # Before the pool forks and before torch is imported anywhere: OpenMP sizes its pool from this
    # at import, in every child; each child then sets torch's counts itself (tasks._device).
    n, why = threads.torch_threads(settings.torch_threads)
    os.environ["OMP_NUM_THREADS"] = str(n)
    log.info("torch threads per job process: %d (from %s)", n, why)


@worker_init.connect
def _serve_metrics(sender, **_):
    if settings.metrics_port:  # before the pool forks: children inherit the multiprocess dir
        metrics.serve(sender, settings.metrics_port, settings.metrics_addr)


@worker_init.connect
def _private_working_directory(**_):
    # Last of the worker_init receivers, before the pool forks: every child inherits it.
    global _work_dir
    _work_dir = tempfile.mkdtemp(prefix="saeq-worker-cwd-")  # empty, mode 0700
    os.chdir(_work_dir)


_work_dir: str | None = None


@worker_process_shutdown.connect
def _child_exited(pid, **_):
    metrics.process_died(pid)


@task_prerun.connect
def _pod_busy(**_):
    # The pod's deletion cost (saeq_worker.pod_cost): a scale-in removes an idle pod first.
    if (pod := pod_cost.this_pod()) is not None:
        pod.busy()


@task_postrun.connect
def _pod_idle(**_):
    if (pod := pod_cost.this_pod()) is not None:
        pod.idle()


@worker_shutting_down.connect
def _preempt_pool_jobs(**_):
    # The main process, on SIGTERM (warm) or SIGQUIT (cold): the pool's jobs save their state and
    # queue themselves again for another worker before Celery waits out (or kills) their tasks.
    from saeq.platform.registry import Registry
    from saeq_worker.draining import preempt_pool_jobs

    try:
        preempt_pool_jobs(Registry.from_url(settings.redis_url, retry_s=min(settings.redis_retry_s, 5.0)))
    except Exception:  # the jobs then resume from their last checkpoint, as after a kill
        log.exception("could not ask the running jobs to yield")


@worker_shutdown.connect
def _remove_metrics_dir(**_):
    metrics.cleanup()
    if _work_dir is not None:
        shutil.rmtree(_work_dir, ignore_errors=True)
