"""How much work each queue has: the jobs waiting for it and the jobs running on it.

What an autoscaler needs (k8s/components/keda: pods = waiting + running). Since the scheduler
holds a job in saeq until a worker advertises a free slot (saeq.platform.scheduler), the broker's
list sees only what was sent: with no pod up, nothing is sent and the list stays empty. So
"waiting" here counts both a job ready to run still in its team's waiting set (dependencies met,
not sent) and a job sent to the queue that no worker has claimed yet; a job held back by
`depends_on` is not waiting. Reads grow with the open work (waiting and sent jobs), never with the
jobs ever stored: four pipelined round trips, whatever the registry holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from saeq.platform import redis_keys
from saeq.platform.dispatch import QUEUES
from saeq.platform.job_model import decode
from saeq.specs.states import TERMINAL

if TYPE_CHECKING:
    from saeq.platform.registry import Registry


@dataclass(frozen=True)
class QueueLoad:
    waiting: int
    """Jobs ready to run on the queue: not sent yet (waiting for a slot) or sent and unclaimed."""
    running: int
    """Jobs a worker of the queue has claimed and not ended."""


def queue_loads(registry: Registry) -> dict[str, QueueLoad]:
    """Every queue's load (each queue in saeq.platform.dispatch.QUEUES, zeros included)."""
    r = registry.r
    teams = sorted({*registry.teams.teams(), "default"})
    pipe = r.pipeline(transaction=False)
    for team in teams:
        pipe.zrange(redis_keys.team(team, "waiting"), 0, -1)
    for queue in QUEUES:
        pipe.smembers(redis_keys.queue_dispatched(queue))
    rows = pipe.execute()
    waiting_ids = [job_id for ids in cast(list[list[str]], rows[: len(teams)]) for job_id in ids]
    sent = dict(zip(QUEUES, (sorted(cast(set[str], s)) for s in rows[len(teams) :]), strict=True))

    pipe = r.pipeline(transaction=False)
    for job_id in waiting_ids:
        pipe.hget(redis_keys.job(job_id), "queue")
    for queue in QUEUES:
        for job_id in sent[queue]:
            pipe.hget(redis_keys.job(job_id), "state")
            pipe.sismember(redis_keys.RUNNING, job_id)
    replies = pipe.execute() if waiting_ids or any(sent.values()) else []

    waiting = dict.fromkeys(QUEUES, 0)
    running = dict.fromkeys(QUEUES, 0)
    for raw in replies[: len(waiting_ids)]:
        if raw is not None and (queue := decode({"q": raw})["q"]) in waiting:
            waiting[queue] += 1
    it = iter(replies[len(waiting_ids) :])
    for queue in QUEUES:
        for _job_id in sent[queue]:
            state, is_running = next(it), next(it)
            if is_running:
                running[queue] += 1
            elif state is not None and decode({"s": state})["s"] not in TERMINAL:
                waiting[queue] += 1  # sent, not claimed yet (a record gone or ended: left behind)
    return {q: QueueLoad(waiting=waiting[q], running=running[q]) for q in QUEUES}
