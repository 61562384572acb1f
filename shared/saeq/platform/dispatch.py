"""The Celery app as both sides see it: the API sends by task name, workers consume.

One factory so that every app on the broker shares the same settings; Redis's visibility timeout in
particular must be identical everywhere, or a short one redelivers long jobs that are still running.
"""

from __future__ import annotations

import json

from celery import Celery
from kombu.entity import Queue

from saeq.platform.settings import PlatformSettings

QUEUES = ("gpu", "gpu-multi", "steer")
# Live requests (steering, label search) go to the "steer" queue, served by workers that keep the
# model and SAE loaded between requests.
# The requests themselves wait in per-team queues in Redis (saeq.platform.live); a message only wakes a worker.
LIVE_TASK = "saeq.platform.live"
LIVE_QUEUE = "steer"

# Which queue a job kind goes to. Every kind runs the language model or trains (a label job with a
# remote explainer still builds its feature index from the SAE and the model), so all go to `gpu`;
# there is no CPU-only job kind, hence no `cpu` queue.
KIND_QUEUE = {"harvest": "gpu", "train": "gpu", "evaluate": "gpu", "steer": "gpu", "label": "gpu"}
# A job asking for several GPUs (`gpus: N`, train jobs) goes to the multi-GPU pool, whose pods hold
# a node's GPUs: a one-GPU worker could not run it.
MULTI_GPU_QUEUE = "gpu-multi"


def job_queue(spec) -> str:
    """The queue a job's spec goes to: its kind's, or the multi-GPU pool's when it asks for more
    than one GPU."""
    return MULTI_GPU_QUEUE if getattr(spec, "gpus", 1) > 1 else KIND_QUEUE[spec.kind]


def task_name(kind: str) -> str:
    return f"saeq.{kind}"


def make_celery(settings: PlatformSettings) -> Celery:
    app = Celery("saeq", broker=settings.redis_url)
    app.conf.update(
        task_queues=[Queue(q) for q in QUEUES],
        task_default_queue="gpu",
        task_acks_late=True,  # a message is acked only after the job ends
        task_reject_on_worker_lost=True,  # a killed worker process puts its message back
        worker_prefetch_multiplier=1,  # one job at a time per process: jobs are long
        task_ignore_result=True,  # job records live in saeq's registry, not here
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        # Ride out a broker restart when sending (~25 s, as saeq.platform.registry's Redis calls do): the
        # default gives up after 0.6 s, and the job would wait for the reaper to send it again.
        task_publish_retry_policy={"max_retries": 15, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2.0},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_track_started=False,
    )
    return app


def sender(app: Celery):
    """A `send(job, dispatch_id)` for the registry."""

    def send(job: dict, dispatch_id: str) -> None:
        # The task id is the dispatch id, so the reaper can tell a waiting message from a lost one.
        app.send_task(task_name(job["kind"]), args=[job["id"], dispatch_id], queue=job["queue"], task_id=dispatch_id)

    return send


def waiting_dispatches(r) -> set[str]:
    """Dispatch ids of the job messages waiting on the queues of a Redis broker (`r`, a redis-py
    client of the broker's database). Kombu's Redis transport keeps a queue as lists, one per
    priority step (`gpu`, `gpu\\x06\\x163`, ...); a message taken by a worker is in none of them."""
    from kombu.transport.redis import Channel

    ids = set()
    for queue in QUEUES:
        for step in Channel.priority_steps:
            key = queue if not step else f"{queue}{Channel.sep}{step}"
            for raw in r.lrange(key, 0, -1):
                try:
                    ids.add(json.loads(raw)["headers"]["id"])
                except (ValueError, KeyError, TypeError):
                    continue
    return ids
