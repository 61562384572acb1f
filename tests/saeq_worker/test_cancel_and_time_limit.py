"""Cancelling a job in each of its states, and time limits, through the API and a real worker."""

from __future__ import annotations

import os
import signal
import time

import pytest

from saeq import keys
from saeq.specs import HarvestSpec, ModelSpec
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


def test_cancel_in_every_state(stack, client, tiny_model_dir):
    running = client.submit(_long(tiny_model_dir))
    wait_for(lambda: client.get(running["id"])["progress"]["figures"].get("tokens", 0) > 0, 120, "the harvest to run")
    # The one worker is busy: this one is sent to the queue, and no worker claims it.
    sent = client.submit(_short(tiny_model_dir))
    waiting = client.submit(_short(tiny_model_dir), depends_on=[running["id"]])
    assert client.get(sent["id"])["dispatched"]
    assert client.get(waiting["id"])["state"] == "queued"

    # Queued, waiting on a dependency: cancelled at once; the dependency runs on.
    done = client.cancel(waiting["id"])
    assert (done["state"], done["error"]["code"]) == ("cancelled", "cancelled")
    assert client.get(running["id"])["state"] == "running"

    # Queued and sent, not claimed: cancelled at once; its message is skipped later.
    done = client.cancel(sent["id"])
    assert (done["state"], done["attempts"]) == ("cancelled", 0)

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
