"""Cancelling a job in each of its states, and time limits, through the API and a real worker."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import pytest
import redis

from saeq import keys
from saeq.platform import pools
from saeq.specs import HarvestSpec, ModelSpec
from saeq.specs.scheduling import WorkerAd
from tests.helpers import wait_for
from tests.tiny_model import save_tiny_llama

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), n_layers=2, d_model=32)


def _long(model_dir, **kw) -> HarvestSpec:
    """A harvest of the tiny model that runs for minutes unless stopped."""
    return HarvestSpec(
        model=ModelSpec(name=str(model_dir)),
        hooks=["blocks.0.hook_resid_post"],
        max_tokens=1_000_000,
        context_len=64,
        batch_size=2,
        shard_tokens=4096,
        **kw,
    )


def _short(model_dir) -> HarvestSpec:
    return HarvestSpec(
        model=ModelSpec(name=str(model_dir)),
        hooks=["blocks.0.hook_resid_post"],
        max_tokens=512,
        context_len=64,
        shard_tokens=512,
    )


def _phantom_slot(stack, worker: str) -> Callable[[], None]:
    """Advertise one slot on the gpu queue that no process serves (a worker that died after its
    last ad, within the ad's TTL): the scheduler then sends a job that nobody claims. Returns
    the withdrawal."""
    r = redis.Redis.from_url(stack.redis_url, decode_responses=True)
    ad = WorkerAd(
        worker=worker,
        queue="gpu",
        device="cpu",
        device_name="phantom",
        memory_bytes=1 << 40,
        count=1,
        slots=1,
        updated_at=time.time(),
    )
    pools.advertise(r, ad, ttl_s=300)
    return lambda: pools.withdraw(r, worker, "gpu")


def test_cancel_in_every_state(stack, client, tiny_model_dir):
    running = client.submit(_long(tiny_model_dir))
    wait_for(lambda: client.get(running["id"])["progress"]["figures"].get("tokens", 0) > 0, 120, "the harvest to run")
    # The one worker is busy and its slot the queue's only one: this job waits in saeq, unsent.
    held = client.submit(_short(tiny_model_dir))
    waiting = client.submit(_short(tiny_model_dir), depends_on=[running["id"]])
    assert (client.get(held["id"])["state"], client.get(held["id"])["dispatched"]) == ("queued", False)
    assert client.get(waiting["id"])["state"] == "queued"

    # Queued for a free slot: cancelled at once, and it never reaches the queue.
    done = client.cancel(held["id"])
    assert (done["state"], done["attempts"], done["dispatched"]) == ("cancelled", 0, False)

    # Queued, waiting on a dependency: cancelled at once; the dependency runs on.
    done = client.cancel(waiting["id"])
    assert (done["state"], done["error"]["code"]) == ("cancelled", "cancelled")
    assert client.get(running["id"])["state"] == "running"

    # Queued and sent, not claimed (a slot advertised by no live process): cancelled at once; its
    # message is skipped later.
    withdraw = _phantom_slot(stack, "phantom:1")
    try:
        sent = client.submit(_short(tiny_model_dir))
        wait_for(lambda: client.get(sent["id"])["dispatched"], 30, "the job to be sent to the phantom slot")
        done = client.cancel(sent["id"])
        assert (done["state"], done["attempts"]) == ("cancelled", 0)
    finally:
        withdraw()

    # Running: its worker stops it within seconds, and writes nothing more.
    t0 = time.monotonic()
    assert client.cancel(running["id"])["cancel_requested"]
    done = client.wait(running["id"], timeout=30, raise_on_failure=False)
    stopped_s = time.monotonic() - t0
    assert (done["state"], done["error"]["code"]) == ("cancelled", "cancelled")
    assert stopped_s < 10, stopped_s
    phases = [e["phase"] for e in client.events(running["id"])]
    assert phases[-2:] == ["cancelling", "cancelled"], phases
    written = {a["key"] for a in client.artifacts(running["id"])["artifacts"]}
    assert keys.manifest(running["id"]) not in written
    time.sleep(2)
    assert {a["key"] for a in client.artifacts(running["id"])["artifacts"]} == written

    # The worker is free again: the cancelled job's message was skipped, the next one runs.
    after = client.wait(client.submit(_short(tiny_model_dir))["id"], timeout=120)
    assert after["state"] == "succeeded"
    assert client.get(sent["id"])["state"] == "cancelled" and client.get(sent["id"])["attempts"] == 0

    # Ended: cancelling changes nothing.
    again = client.cancel(after["id"])
    assert (again["state"], again["error"], again["cancel_requested"]) == ("succeeded", None, False)
    assert client.cancel(running["id"])["state"] == "cancelled"


def test_a_job_past_its_time_limit_is_stopped_by_its_worker(client, tiny_model_dir):
    job = client.submit(_long(tiny_model_dir), time_limit_s=3)
    done = client.wait(job["id"], timeout=60, raise_on_failure=False)
    assert (done["state"], done["error"]["code"]) == ("failed", "time_limit"), done["error"]
    message = done["error"]["message"]
    assert "time limit of 3 s" in message and "did not stop it" not in message, message
    assert 3 <= done["finished_at"] - done["started_at"] < 15
    assert not client.artifacts(job["id"])["published"]


def test_the_reaper_ends_a_job_past_its_time_limit_when_its_worker_hangs(stack, client, tiny_model_dir):
    job = client.submit(_long(tiny_model_dir), time_limit_s=4)
    wait_for(lambda: client.get(job["id"])["state"] == "running", 60, "the job to start")
    worker = stack.procs["worker"].pid
    os.killpg(worker, signal.SIGSTOP)  # hung: no heartbeats, no progress, no check of the limit
    try:
        done = client.wait(job["id"], timeout=60, raise_on_failure=False)
    finally:
        os.killpg(worker, signal.SIGCONT)
    assert (done["state"], done["error"]["code"]) == ("failed", "time_limit"), done["error"]
    assert "did not stop it" in done["error"]["message"]
    # Woken up, the worker finds its lease gone and leaves the record alone.
    after = client.wait(client.submit(_short(tiny_model_dir))["id"], timeout=120)
    assert after["state"] == "succeeded"
    assert client.get(job["id"])["error"] == done["error"]
