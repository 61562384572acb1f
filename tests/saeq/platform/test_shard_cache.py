"""The node-local shard cache: one fetch per shard however many readers miss it at once (threads or
processes, against real S3), every hit verified by sha256, and LRU eviction within the budget."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import threading
import time
import uuid
from collections import Counter

import pytest

from saeq.platform.s3_store import S3Store
from saeq.platform.shard_cache import ShardCache, ShardMismatch


class CountingGets:
    """A real store, counting its GETs by key; `delay_s` slows each so concurrent misses overlap."""

    def __init__(self, store, delay_s: float = 0.0):
        self.store, self.delay_s = store, delay_s
        self.gets: Counter[str] = Counter()
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes:
        with self._lock:
            self.gets[key] += 1
        time.sleep(self.delay_s)
        return self.store.get(key)


def blob(n: int, seed: int) -> tuple[bytes, str]:
    data = hashlib.sha256(str(seed).encode()).digest() * (n // 32)
    return data, hashlib.sha256(data).hexdigest()


def fetcher(data: bytes, calls: list[int]):
    def fetch() -> bytes:
        calls.append(1)
        return data

    return fetch


def test_a_hit_is_served_from_disk_without_fetching(tmp_path):
    data, sha = blob(4096, 0)
    cache, calls = ShardCache(tmp_path, 1 << 20), []
    assert cache.get(sha, fetcher(data, calls)) == data
    assert cache.get(sha, fetcher(data, calls)) == data
    assert len(calls) == 1
    assert cache.path(sha) == tmp_path / sha[:2] / sha and cache.path(sha).read_bytes() == data
    c = cache.counts
    assert (c.hits, c.misses, c.bytes_fetched, c.bytes_read) == (1, 1, 4096, 4096)


def test_a_corrupt_cached_shard_is_detected_and_fetched_again(tmp_path):
    data, sha = blob(4096, 1)
    cache, calls = ShardCache(tmp_path, 1 << 20), []
    cache.get(sha, fetcher(data, calls))
    raw = bytearray(cache.path(sha).read_bytes())
    raw[1000] ^= 0xFF  # one flipped byte, as a bad disk sector would leave it
    cache.path(sha).write_bytes(raw)

    assert cache.get(sha, fetcher(data, calls)) == data
    assert len(calls) == 2 and cache.counts.corrupt == 1
    assert cache.path(sha).read_bytes() == data  # the entry was replaced by the good bytes
    assert cache.get(sha, fetcher(data, calls)) == data and len(calls) == 2


def test_bytes_that_are_not_the_shard_are_refused_and_not_cached(tmp_path):
    data, sha = blob(4096, 2)
    cache = ShardCache(tmp_path, 1 << 20)
    with pytest.raises(ShardMismatch, match=sha) as e:
        cache.get(sha, lambda: data[:-1])  # a truncated download
    assert e.value.code == "store_error"
    assert not cache.path(sha).exists() and cache.usage() == 0


def test_lru_eviction_keeps_the_cache_under_its_budget_and_evicts_the_oldest(tmp_path):
    blobs = [blob(1024, 10 + i) for i in range(4)]
    cache = ShardCache(tmp_path, max_bytes=3 * 1024)
    long_ago = time.time() - 1000
    for i, (data, sha) in enumerate(blobs[:3]):
        cache.get(sha, lambda d=data: d)
        os.utime(cache.path(sha), (long_ago + i, long_ago + i))  # read in order 0, 1, 2
    calls: list[int] = []
    cache.get(blobs[0][1], fetcher(blobs[0][0], calls))  # a hit makes 0 the most recent
    assert calls == []

    cache.get(blobs[3][1], lambda: blobs[3][0])  # one too many: the least recently used goes

    assert [cache.path(sha).exists() for _, sha in blobs] == [True, False, True, True]
    assert cache.usage() == 3 * 1024 <= cache.max_bytes
    assert (cache.counts.evictions, cache.counts.bytes_evicted) == (1, 1024)


def test_a_shard_larger_than_the_budget_is_served_uncached(tmp_path):
    data, sha = blob(4096, 3)
    cache, calls = ShardCache(tmp_path, max_bytes=1024), []
    assert cache.get(sha, fetcher(data, calls)) == data
    assert not cache.path(sha).exists() and cache.usage() == 0


def test_temp_files_of_killed_writers_are_swept_and_live_ones_kept(tmp_path):
    cache = ShardCache(tmp_path, 1 << 20)
    (tmp_path / "ab").mkdir()
    stale, live = tmp_path / "ab" / ".tmp-stale", tmp_path / "ab" / ".tmp-live"
    stale.write_bytes(b"x" * 100)
    live.write_bytes(b"x" * 100)
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    assert cache.usage() == 0  # temp files are not entries
    assert not stale.exists() and live.exists()


def test_threads_reading_while_eviction_runs_always_get_whole_right_shards(tmp_path):
    blobs = [blob(4096, 20 + i) for i in range(6)]
    cache = ShardCache(tmp_path, max_bytes=10 * 1024)  # room for two: evictions all the time
    wrong: list[int] = []

    def reader(seed: int) -> None:
        for step in range(30):
            i = (seed * 7 + step * 5) % len(blobs)
            data, sha = blobs[i]
            if cache.get(sha, lambda d=data: d) != data:
                wrong.append(i)

    workers = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    assert wrong == []
    assert cache.counts.hits + cache.counts.misses == 120 and cache.counts.evictions > 0
    assert cache.usage() <= cache.max_bytes


# --- against real S3, from two processes ---------------------------------------------------------


@pytest.fixture()
def s3_store(s3_srv) -> S3Store:
    store = S3Store(s3_srv.endpoint, s3_srv.access_key, s3_srv.secret_key, f"t-{uuid.uuid4().hex[:12]}")
    store.ensure_bucket()
    return store


def _read_in_a_process(s3: dict, key: str, sha: str, root: str, barrier, results) -> None:
    store = CountingGets(S3Store(**s3), delay_s=0.5)  # a slow GET: the other process misses meanwhile
    cache = ShardCache(root, 1 << 20)
    barrier.wait()
    data = cache.get(sha, lambda: store.get(key))
    results.put((store.gets[key], hashlib.sha256(data).hexdigest(), cache.counts.misses, cache.counts.hits))


def test_two_processes_missing_the_same_shard_at_once_fetch_it_from_s3_once(s3_store, s3_srv, tmp_path):
    data, sha = blob(64 * 1024, 30)
    key = "jobs/h/activations/blocks.0/shard-00000.safetensors"
    s3_store.put(key, data)
    s3 = {"endpoint": s3_srv.endpoint, "access_key": s3_srv.access_key, "secret_key": s3_srv.secret_key}
    s3["bucket"] = s3_store.bucket
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    procs = [
        ctx.Process(target=_read_in_a_process, args=(s3, key, sha, str(tmp_path / "cache"), barrier, results))
        for _ in range(2)
    ]
    for p in procs:
        p.start()
    got = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0

    assert sum(gets for gets, *_ in got) == 1  # S3 saw one GET for the two readers
    assert {digest for _, digest, *_ in got} == {sha}
    assert sorted((misses, hits) for *_, misses, hits in got) == [(0, 1), (1, 0)]
