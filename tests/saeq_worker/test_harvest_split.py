"""A harvest split into slices across worker processes, end to end (API, Redis, Celery, S3): its
merged manifest is a single harvest's, and a killed run resumes without redoing finished slices."""

from __future__ import annotations

import time
from typing import Any

import pytest

from saeq.specs import HarvestSpec, ModelSpec
from tests.fixtures_stack import make_stack
from tests.helpers import wait_for
from tests.tiny_model import save_tiny_llama

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory, redis_srv, s3_srv):
    """API + one worker with two processes, so a slice can run beside the job's own task."""
    st = make_stack(tmp_path_factory.mktemp("split-stack"), redis_srv, s3_srv)
    st.opts.worker_concurrency = 2
    with st:
        yield st


def _comparable(manifest: dict) -> dict:
    """The manifest without what differs between two jobs: ids, times, the slices asked for."""
    job_id = manifest["job_id"]
    out = {k: v for k, v in manifest.items() if k not in ("job_id", "created_at")}
    out["spec"] = {k: v for k, v in manifest["spec"].items() if k != "slices"}
    out["hooks"] = {
        hook: {**info, "shards": [{**s, "key": s["key"].replace(job_id, "JOB")} for s in info["shards"]]}
        for hook, info in manifest["hooks"].items()
    }
    return out


def test_split_harvest_manifest_equals_a_single_harvest(client, tmp_path_factory):
    model_dir = save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), n_layers=3, d_model=64)
    # 63 contexts of 64 tokens, 8 per shard: shards 0..7, the last of 7 contexts; slices [0,2) [2,5) [5,8).
    common: dict[str, Any] = dict(
        model=ModelSpec(name=str(model_dir)),
        hooks=["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out"],
        max_tokens=4000,
        context_len=64,
        batch_size=4,
        shard_tokens=512,
        sink_norm_factor=1.2,  # the random model's norms are close: some outliers to count
    )
    single = client.wait(client.submit(HarvestSpec(**common))["id"], timeout=240)
    split = client.wait(client.submit(HarvestSpec(**common, slices=3))["id"], timeout=240)
    assert split["state"] == "succeeded" and split["progress"]["fraction"] == 1.0
    a, b = client.manifest(single["id"]), client.manifest(split["id"])
    assert b["spec"]["slices"] == 3 and b["job_id"] == split["id"]
    assert [s["index"] for s in b["hooks"]["blocks.1.hook_resid_post"]["shards"]] == list(range(8))
    assert b["hooks"]["blocks.0.hook_mlp_out"]["sinks"]["n_norm_outliers"] > 0
    assert _comparable(b) == _comparable(a)  # keys, sizes, sha256, sink statistics, docs used
    slices = [e for e in client.events(split["id"]) if e["phase"] == "slice"]
    assert sorted(e["figures"]["slice"] for e in slices) == [0, 1, 2]


def test_killed_split_harvest_resumes_without_redoing_finished_slices(stack, client, tmp_path_factory):
    # A wider tiny model: a shard takes about a second here, so the kill lands inside a slice.
    model_dir = save_tiny_llama(tmp_path_factory.mktemp("wide-llama"), n_layers=4, d_model=768)
    hook = "blocks.3.hook_resid_post"
    spec = HarvestSpec(
        model=ModelSpec(name=str(model_dir)),
        hooks=[hook],
        max_tokens=12 * 1024,
        shard_tokens=1024,
        context_len=128,
        batch_size=4,
        slices=3,
    )  # 12 shards, slices of 4
    job = client.submit(spec)
    prefix = f"jobs/{job['id']}/"
    shard_key = lambda s: f"{prefix}harvest/{hook}/shard-{s:05d}.safetensors"
    slice_key = lambda i: f"{prefix}slices/harvest-{i:03d}.json"
    keys = lambda: {a["key"] for a in client.artifacts(job["id"])["artifacts"]}

    def written(present: set[str]) -> dict[int, int]:  # slice -> its shards in the store
        return {i: sum(shard_key(s) in present for s in range(4 * i, 4 * i + 4)) for i in range(3)}

    def finished_and_midway() -> bool:
        present = keys()
        done = {i for i in range(3) if slice_key(i) in present}
        return bool(done) and any(0 < n < 4 for i, n in written(present).items() if i not in done)

    wait_for(finished_and_midway, 300, "a finished slice and one midway")
    stack.kill("worker")  # SIGKILL, whole process group
    before = keys()  # nothing writes until the respawn
    n_events = len(client.events(job["id"]))
    stack.respawn("worker")
    done = client.wait(job["id"], timeout=300)
    assert done["state"] == "succeeded" and done["attempts"] == 2

    finished = {i for i in range(3) if slice_key(i) in before}
    resumed = [e["figures"] for e in client.events(job["id"])[n_events:] if e["phase"] == "slice"]
    started = {f["slice"]: f["shards_before"] for f in resumed}
    assert finished and not finished & started.keys()  # a finished slice is never run again
    assert started.keys() == set(range(3)) - finished
    assert started == {i: n for i, n in written(before).items() if i in started}  # only missing shards redone
    assert any(0 < n < 4 for n in started.values())  # the slice killed midway went on from there
    manifest = client.manifest(job["id"])
    assert [s["index"] for s in manifest["hooks"][hook]["shards"]] == list(range(12))


def test_cancel_stops_the_slices(client, tmp_path_factory):
    model_dir = save_tiny_llama(tmp_path_factory.mktemp("wide-llama-cancel"), n_layers=4, d_model=768)
    hook = "blocks.3.hook_resid_post"
    spec = HarvestSpec(
        model=ModelSpec(name=str(model_dir)),
        hooks=[hook],
        max_tokens=24 * 1024,
        shard_tokens=1024,
        context_len=128,
        batch_size=4,
        slices=2,
    )
    job = client.submit(spec)
    shards = lambda: {a["key"] for a in client.artifacts(job["id"])["artifacts"] if "/harvest/" in a["key"]}
    # Both slices started: the job's task runs one, the worker's other process the other.
    wait_for(lambda: len([e for e in client.events(job["id"]) if e["phase"] == "slice"]) == 2, 120, "two slices")
    client.cancel(job["id"])
    done = client.wait(job["id"], timeout=30, raise_on_failure=False)
    assert done["state"] == "cancelled" and not client.artifacts(job["id"])["published"]
    time.sleep(3)  # a slice polls the job's record every second and stops between micro-batches
    written = shards()
    time.sleep(4)
    assert shards() == written and len(written) < 24
