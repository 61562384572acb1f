"""The train worker's shard reads (saeq_worker.shard_reads) against real S3 (SeaweedFS): jobs that
share the node's cache fetch each shard once, a corrupt cached shard is fetched again and the job
still trains on the right bytes, and without a cache every shard is still checked by sha256."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import threading
import uuid

import pytest
import torch

from saeq.ml.activations import HarvestData
from saeq.platform.s3_store import S3Store
from saeq.platform.shard_cache import ShardCache, ShardMismatch
from saeq.specs.manifests import HarvestHook
from saeq_worker import metrics
from saeq_worker.settings import WorkerSettings
from saeq_worker.shard_reads import node_shard_cache, shard_reader
from tests.saeq.conftest import fake_harvest
from tests.saeq.platform.test_shard_cache import CountingGets

JOB = "d" * 32
HOOK = "blocks.1.hook_resid_post"


@pytest.fixture()
def s3_store(s3_srv) -> S3Store:
    store = S3Store(s3_srv.endpoint, s3_srv.access_key, s3_srv.secret_key, f"t-{uuid.uuid4().hex[:12]}")
    store.ensure_bucket()
    return store


@pytest.fixture()
def harvest(s3_store) -> tuple[dict, HarvestHook]:
    """A harvest of 512 tokens x 8 in 8 shards on S3, its manifest carrying each shard's sha256."""
    acts = torch.randn(512, 8, generator=torch.Generator().manual_seed(0))
    manifest = fake_harvest(s3_store, JOB, acts, context_len=16, shard_tokens=64, hook=HOOK)
    entry = manifest["hooks"][HOOK]
    shards = []
    for s in entry["shards"]:  # as the harvest worker lists them
        data = s3_store.get(s["key"])
        shards.append({k: s[k] for k in ("index", "n_tokens", "key")} | {"size": len(data)})
        shards[-1]["sha256"] = hashlib.sha256(data).hexdigest()
    entry["shards"] = shards
    hook = HarvestHook.model_validate(entry | {"dtype": "float32"})
    return manifest, hook


def rows(manifest: dict, read) -> tuple[torch.Tensor, torch.Tensor]:
    """What a train job reads: every training row and the held-out rows."""
    data = HarvestData(manifest, HOOK, read, batch_size=32, validation_tokens=64, cache_bytes=0)
    return data.train_rows(), data.validation()


def test_two_jobs_sharing_the_node_cache_read_each_shard_from_s3_once(harvest, s3_store, tmp_path):
    manifest, hook = harvest
    expected = rows(manifest, s3_store.get)
    counting = CountingGets(s3_store, delay_s=0.05)
    cache = ShardCache(tmp_path / "cache", 1 << 30)
    got: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def job(n: int) -> None:
        got[n] = rows(manifest, shard_reader(counting, hook, cache))

    jobs = [threading.Thread(target=job, args=(n,)) for n in range(2)]
    for t in jobs:
        t.start()
    for t in jobs:
        t.join()

    assert counting.gets == {s.key: 1 for s in hook.shards}
    for train, val in got.values():
        assert torch.equal(train, expected[0]) and torch.equal(val, expected[1])
    rows(manifest, shard_reader(counting, hook, cache))  # a retry of either job, later
    assert counting.gets == {s.key: 1 for s in hook.shards}


def test_a_corrupt_cached_shard_is_fetched_again_and_the_job_reads_the_right_bytes(harvest, s3_store, tmp_path):
    manifest, hook = harvest
    counting = CountingGets(s3_store)
    cache = ShardCache(tmp_path / "cache", 1 << 30)
    first = rows(manifest, shard_reader(counting, hook, cache))
    bad = hook.shards[3]
    path = cache.path(bad.sha256)
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x01  # a bit flipped in the tensor data, past the header: decoding alone would not notice
    path.write_bytes(raw)

    second = rows(manifest, shard_reader(counting, hook, cache))

    assert torch.equal(second[0], first[0]) and torch.equal(second[1], first[1])
    assert counting.gets[bad.key] == 2 and cache.counts.corrupt == 1
    assert all(counting.gets[s.key] == 1 for s in hook.shards if s.key != bad.key)


def test_without_a_cache_every_shard_is_still_checked_against_the_manifest(harvest, s3_store, tmp_path):
    manifest, hook = harvest
    read = shard_reader(s3_store, hook, None)
    assert torch.equal(rows(manifest, read)[0], rows(manifest, s3_store.get)[0])

    other = hook.shards[0].model_copy(update={"sha256": "0" * 64})
    tampered = hook.model_copy(update={"shards": [other, *hook.shards[1:]]})
    with pytest.raises(ShardMismatch, match=other.key) as e:
        shard_reader(s3_store, tampered, None)(other.key)
    assert e.value.code == "store_error"
    cache = ShardCache(tmp_path / "cache", 1 << 20)
    with pytest.raises(ShardMismatch, match=other.key):  # and through a cache, which keeps nothing
        shard_reader(s3_store, tampered, cache)(other.key)
    assert cache.usage() == 0
    with pytest.raises(ValueError, match="not a shard"):
        read("jobs/other/shard.safetensors")


def test_the_node_cache_is_for_s3_stores_under_the_cache_dir_unless_turned_off(tmp_path):
    s3 = {"store": "s3://bucket", "cache_dir": str(tmp_path), "insecure_dev": True}
    cache = node_shard_cache(WorkerSettings(**s3))
    assert cache is not None and cache.root == tmp_path / "shards"
    assert 0 < cache.max_bytes <= 50 << 30
    explicit = node_shard_cache(WorkerSettings(**s3, shard_cache_dir=str(tmp_path / "fast"), shard_cache_bytes=1 << 20))
    assert explicit is not None and explicit.root == tmp_path / "fast" and explicit.max_bytes == 1 << 20
    assert node_shard_cache(WorkerSettings(**s3, shard_cache_bytes=0)) is None
    assert node_shard_cache(WorkerSettings(store=f"file://{tmp_path}/store", cache_dir=str(tmp_path))) is None


def test_the_node_cache_budget_is_clamped_to_the_disk_and_its_events_reach_the_metrics(harvest, s3_store, tmp_path):
    manifest, hook = harvest
    events: list[tuple[str, int]] = []
    settings = WorkerSettings(store="s3://b", cache_dir=str(tmp_path), shard_cache_bytes=1 << 60, insecure_dev=True)
    cache = node_shard_cache(settings, on_event=lambda event, n: events.append((event, n)))
    assert cache is not None and cache.max_bytes < 1 << 60  # no disk here holds an exbibyte
    read = shard_reader(s3_store, hook, cache)
    first = hook.shards[0]
    read(first.key)
    read(first.key)
    assert events == [("miss", first.size), ("hit", first.size)]


def test_a_job_process_cache_events_are_served_by_the_worker_metrics(tmp_path):
    # As in a prefork child: the events go to prometheus_client's multiprocess files, which the
    # worker's parent serves merged.
    code = textwrap.dedent(f"""
        import hashlib
        from saeq.platform.shard_cache import ShardCache
        from saeq_worker import metrics
        cache = ShardCache({str(tmp_path / "cache")!r}, 1 << 20, on_event=metrics.shard_cache_event)
        data = b"x" * 1000
        sha = hashlib.sha256(data).hexdigest()
        cache.get(sha, lambda: data)
        cache.get(sha, lambda: data)
    """)
    prom = tmp_path / "prom"
    prom.mkdir()
    child = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, metrics.MULTIPROC_ENV: str(prom)},
        capture_output=True,
        text=True,
    )
    assert child.returncode == 0, child.stderr
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.multiprocess import MultiProcessCollector

    reg = CollectorRegistry()
    MultiProcessCollector(reg, path=str(prom))
    text = generate_latest(reg).decode()
    assert 'saeq_worker_shard_cache_events_total{event="miss"} 1.0' in text
    assert 'saeq_worker_shard_cache_events_total{event="hit"} 1.0' in text
    assert 'saeq_worker_shard_cache_bytes_total{event="hit"} 1000.0' in text
