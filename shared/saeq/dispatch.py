"""The Celery app as both sides see it: the API sends by task name, workers consume.

One factory so that every app on the broker shares the same settings; Redis's visibility timeout in
particular must be identical everywhere, or a short one redelivers long jobs that are still running.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from saeq.config import PlatformSettings

QUEUES = ("gpu", "cpu", "steer")
# Live requests (steering, label search) go to the "steer" queue, served by workers that keep the
# model and SAE loaded between requests.
LIVE_TASK = "saeq.live"
LIVE_QUEUE = "steer"


def live_reply_key(request_id: str) -> str:
    """Redis list a live request's answer is pushed to (the API waits on it with BLPOP)."""
    return f"saeq:live:{request_id}"

# Which queue a job kind goes to. GPU work: anything that runs the language model or trains.
KIND_QUEUE = {"harvest": "gpu", "train": "gpu", "evaluate": "gpu", "steer": "gpu", "label": "gpu"}


def task_name(kind: str) -> str:
    return f"saeq.{kind}"


def make_celery(settings: PlatformSettings) -> Celery:
    app = Celery("saeq", broker=settings.redis_url)
    app.conf.update(
        task_queues=[Queue(q) for q in QUEUES],
        task_default_queue="cpu",
        task_acks_late=True,                 # a message is acked only after the job ends
        task_reject_on_worker_lost=True,     # a killed worker process puts its message back
        worker_prefetch_multiplier=1,        # one job at a time per process: jobs are long
        task_ignore_result=True,             # job records live in saeq's registry, not here
        task_serializer="json", accept_content=["json"],
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_track_started=False,
    )
    return app


def sender(app: Celery):
    """A `send(job, dispatch_id)` for the registry."""

    def send(job: dict, dispatch_id: str) -> None:
        app.send_task(task_name(job["kind"]), args=[job["id"], dispatch_id], queue=job["queue"])

    return send
