"""Faults while jobs run: SIGKILLed workers and a restarted Redis (append-only file on) lose no job
and tear or duplicate no artifact. Each test has a Redis of its own, so restarting it disturbs no
other test; the chaos is seeded (SAEQ_CHAOS_SEED) and the seed printed."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import time

import httpx
import pytest

from saeq import keys
from saeq.client.client import Client
from saeq.specs import HarvestSpec, ModelSpec, SaeConfig, TrainSpec
from tests.fixtures_stack import make_stack
from tests.servers import redis_server
from tests.tiny_model import save_tiny_llama

pytestmark = pytest.mark.integration

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), n_layers=2, d_model=32)


@contextlib.contextmanager
def _stack(tmp_path, s3_srv, *, workers: int):
    """A stack with `workers` worker processes on a Redis of its own; yields (stack, redis, client)."""
    with redis_server(appendonly=True, log_dir=tmp_path / "redis") as redis_srv:
        stack = make_stack(tmp_path / "stack", redis_srv, s3_srv)
        stack.opts.workers = workers
        with stack, Client(stack.url, api_key=getattr(stack, "admin_key", None), timeout=60) as client:
            yield stack, redis_srv, client


def _harvest(model_dir, max_tokens: int = 16_384) -> HarvestSpec:
    return HarvestSpec(
        model=ModelSpec(name=str(model_dir)),
        hooks=[HOOK],
        max_tokens=max_tokens,
        context_len=64,
        batch_size=4,
        shard_tokens=512,
    )


def _train(harvest_id: str) -> TrainSpec:
    return TrainSpec(
        activations={"job_id": harvest_id, "hook": HOOK},
        saes=[SaeConfig(name="topk", d_sae=64, k=4)],
        batch_size=256,
        # Eight epochs, eight checkpoints: a run of seconds, long enough to be caught mid-way.
        total_tokens=131_072,
        validation_tokens=512,
        checkpoint_every_tokens=16_384,
    )


def _worker_of(stack, job: dict) -> str | None:
    """The stack's worker process (by name) whose pool runs `job`: its group is the worker's."""
    try:
        group = os.getpgid(int((job.get("worker") or ":").rsplit(":", 1)[1]))
    except (ValueError, ProcessLookupError):
        return None
    return next((n for n in stack.worker_names() if stack.procs[n].pid == group), None)


def _midway(client, job: dict) -> bool:
    """Whether `job` has stored something to resume from and has a good part left to run. Progress
    is reported every few seconds, too coarse for a training of seconds: its checkpoint events say
    more (each is a stored state)."""
    if job["kind"] == "train":
        spec = job.get("spec") or client.get(job["id"])["spec"]  # a listing leaves specs out
        every = spec["checkpoint_every_tokens"]
        saved = [e for e in client.events(job["id"]) if e["phase"] == "checkpoint"]
        return 1 <= len(saved) <= spec["total_tokens"] // every - 4
    return 0.3 < job["progress"]["fraction"] < 0.9


def _busy_worker(stack, client, kind: str, timeout: float) -> str | None:
    """A worker running a `kind` job past its first shards or checkpoints, still running an instant
    before this returns (a kill then makes the job resume)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = list(client.list(kind=kind, state="running"))
        for job in running:
            if not (_midway(client, job) and (name := _worker_of(stack, job))):
                continue
            # Re-read the job: the listing may be a poll old, and a job about to end cannot be resumed.
            if _midway(client, client.get(job["id"])):
                return name
        if not running and not list(client.list(kind=kind, state="queued", limit=1)):
            return None  # every such job has ended: nothing left to interrupt
        time.sleep(0.05)
    return None


def _check_harvest_artifacts(client, job: dict) -> None:
    manifest = client.manifest(job["id"])
    shards = manifest["hooks"][HOOK]["shards"]
    assert [s["index"] for s in shards] == list(range(len(shards)))
    assert sum(s["n_tokens"] for s in shards) == manifest["n_tokens"] == job["spec"]["max_tokens"]
    listed = {a["key"]: a for a in client.artifacts(job["id"])["artifacts"]}
    assert set(listed) == {s["key"] for s in shards} | {keys.manifest(job["id"])}, job["id"]
    for s in shards:
        data = httpx.get(listed[s["key"]]["url"], timeout=30).content
        assert (len(data), hashlib.sha256(data).hexdigest()) == (s["size"], s["sha256"]), s["key"]


def _check_train_artifacts(client, job: dict) -> None:
    manifest = client.manifest(job["id"])
    assert manifest["result"]["tokens"] == job["spec"]["total_tokens"]
    listed = {a["key"]: a for a in client.artifacts(job["id"])["artifacts"]}
    checkpoints = {k for k in listed if k.startswith(keys.checkpoint_prefix(job["id"]))}
    assert set(listed) == {f["key"] for f in manifest["files"]} | {keys.manifest(job["id"])} | checkpoints
    for f in manifest["files"]:
        assert listed[f["key"]]["size"] == f["size"], f["key"]
    for key in checkpoints:  # each a whole state, at a multiple of checkpoint_every_tokens
        tokens = int(key.rsplit("-", 1)[1].removesuffix(".pt"))
        assert key == keys.train_checkpoint(job["id"], tokens)
        assert tokens % job["spec"]["checkpoint_every_tokens"] == 0


@pytest.mark.timeout(300)
def test_chaos_kills_and_a_redis_restart_lose_no_job_and_tear_no_artifact(tmp_path, s3_srv, tiny_model_dir):
    seed = int(os.environ.get("SAEQ_CHAOS_SEED", "20261130"))
    print(f"chaos seed: {seed} (set SAEQ_CHAOS_SEED to replay)")
    rng = random.Random(seed)
    t0 = time.monotonic()
    with _stack(tmp_path, s3_srv, workers=2) as (stack, redis_srv, client):
        harvests = [client.submit(_harvest(tiny_model_dir), name=f"harvest {i}") for i in range(10)]
        trains = [
            client.submit(_train(h["id"]), depends_on=[h["id"]], name=f"train {i}") for i, h in enumerate(harvests)
        ]
        jobs = harvests + trains

        # Five SIGKILLs of a whole worker process group, each worker started again at once: three
        # aimed at a worker whose harvest or training has made progress, two at either worker in
        # whatever state (starting, idle, claiming). One Redis restart while jobs run and wait.
        faults = []
        for step in ["harvest", "harvest", "any", "redis", "train", "any"]:
            time.sleep(rng.uniform(0.5, 4.0))
            if step == "redis":
                redis_srv.restart()
                faults.append(f"{time.monotonic() - t0:5.1f}s redis restart")
                continue
            name = _busy_worker(stack, client, step, timeout=90) if step != "any" else None
            name = name or rng.choice(stack.worker_names())
            stack.kill(name)
            stack.respawn(name)
            faults.append(f"{time.monotonic() - t0:5.1f}s SIGKILL {name} ({step})")
        print("\n".join(faults))

        deadline = t0 + 230
        pending = {j["id"] for j in jobs}
        while pending and time.monotonic() < deadline:
            pending = {i for i in pending if client.get(i)["state"] not in ("succeeded", "failed", "cancelled")}
            time.sleep(0.5)
        final = {j["id"]: client.get(j["id"]) for j in jobs}
        for job in final.values():
            phases = [e["phase"] for e in client.events(job["id"])]
            print(
                f"{job['name']:>9} {job['state']:>9} attempts={job['attempts']} "
                f"{(job['error'] or {}).get('code', '')} requeued={phases.count('requeued')} "
                f"redispatched={phases.count('redispatched')} resumed={phases.count('resumed')}"
            )
        print(f"all ended after {time.monotonic() - t0:.0f} s")
        assert not pending, f"stuck: {[final[i] for i in pending]}"

        for job in final.values():
            if job["state"] == "succeeded":
                (_check_harvest_artifacts if job["kind"] == "harvest" else _check_train_artifacts)(client, job)
                continue
            assert job["state"] == "failed", job
            code = job["error"]["code"]
            if code == "upstream_failed":  # only behind a harvest that failed honestly
                assert final[job["depends_on"][0]]["state"] == "failed", job
            else:
                assert code == "worker_lost" and job["attempts"] == job["max_attempts"], job
            assert not client.artifacts(job["id"])["published"]
        resumed = {final[i]["kind"] for i in final if "resumed" in [e["phase"] for e in client.events(i)]}
        assert resumed == {"harvest", "train"}, f"only {resumed or 'no'} jobs resumed after a kill"


@pytest.mark.timeout(240)
def test_redis_restart_keeps_queued_and_running_jobs(tmp_path, s3_srv, tiny_model_dir):
    with _stack(tmp_path, s3_srv, workers=1) as (stack, redis_srv, client):
        running = client.submit(_harvest(tiny_model_dir, max_tokens=64 * 1024))
        queued = [client.submit(_harvest(tiny_model_dir, max_tokens=1024)) for _ in range(2)]
        deadline = time.monotonic() + 120
        while client.get(running["id"])["progress"]["fraction"] < 0.1:
            assert time.monotonic() < deadline, "the harvest did not start"
            time.sleep(0.1)
        assert all(client.get(j["id"])["state"] == "queued" for j in queued)

        redis_srv.restart()  # SIGTERM: Redis syncs its append-only file and exits, then starts again

        # The running job was not interrupted, and the worker took the queued ones after it.
        done = client.wait(running["id"], timeout=180)
        assert done["attempts"] == 1
        assert "requeued" not in [e["phase"] for e in client.events(running["id"])]
        for job in queued:
            assert client.wait(job["id"], timeout=60)["attempts"] == 1
        _check_harvest_artifacts(client, done)
