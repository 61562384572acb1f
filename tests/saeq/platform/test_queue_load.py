"""Each queue's load as an autoscaler reads it (waiting + running): a job waiting in saeq for a
slot and one sent but unclaimed both wait, a claimed one runs, an ended one is neither, and a job
held by depends_on is not waiting yet."""

from __future__ import annotations

import time

import pytest
import redis

from saeq.platform import fair_share, pools
from saeq.platform.dispatch import QUEUES
from saeq.platform.fair_share import SchedulingPolicy
from saeq.platform.queue_load import QueueLoad, queue_loads
from saeq.platform.registry import Registry, dispatch_ready
from saeq.specs.scheduling import WorkerAd

DB = 12


@pytest.fixture
def registry(redis_srv) -> Registry:
    client = redis.Redis.from_url(f"{redis_srv.url.rsplit('/', 1)[0]}/{DB}", decode_responses=True)
    client.flushdb()
    fair_share.publish_policy(client, SchedulingPolicy(min_run_s=0.0))
    return Registry(client, lease_ttl_s=30)


def test_waiting_and_running_per_queue(registry):
    sent: dict[str, str] = {}

    def send(job: dict, dispatch_id: str) -> None:
        sent[job["id"]] = dispatch_id

    assert queue_loads(registry) == {q: QueueLoad(0, 0) for q in QUEUES}
    pools.advertise(
        registry.r,
        WorkerAd(
            worker="host:1", queue="gpu", device="cpu", device_name="cpu", memory_bytes=1 << 30, count=1,
            slots=2, updated_at=time.time(),
        ),
        ttl_s=60,
    )  # fmt: skip
    ids = []
    for team in ("a", "a", "b", "b"):
        job, _ = registry.create(kind="train", spec={}, queue="gpu", depends_on=[], team=team, priority=0)
        dispatch_ready(registry, job["id"], send, job)
        ids.append(job["id"])
    held, _ = registry.create(kind="train", spec={}, queue="gpu", depends_on=[ids[0]], team="a", priority=0)
    assert len(sent) == 2  # two slots: two sent, two wait in saeq, one held by its dependency
    assert queue_loads(registry)["gpu"] == QueueLoad(waiting=4, running=0)

    first = next(iter(sent))
    claim = registry.claim(first, sent[first], "host:1")
    assert claim.action == "run"
    assert queue_loads(registry)["gpu"] == QueueLoad(waiting=3, running=1)
    assert registry.finish(first, claim.token, "succeeded")
    loads = queue_loads(registry)
    # ended: neither; one sent and unclaimed plus two in saeq still wait (the held job waits for
    # its dependents' dispatch, which the worker does after the end, not the finish itself)
    assert loads["gpu"] == QueueLoad(waiting=3, running=0)
    assert loads["steer"] == QueueLoad(0, 0)
