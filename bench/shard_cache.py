"""The node shard cache's read rates, beside S3 (SeaweedFS on loopback) and the raw file read: shards
read by a train job's reader (saeq_worker.shard_reads) from S3 directly (sha256-checked), through
a cold cache (fetch, check, publish with fsync), through a warm one (read, check), and the cached
files read raw (no check), each with `--threads` readers at once, as a prefetching feed reads.
Usage: python bench/shard_cache.py [--shards 8] [--shard-mib 32] [--threads 4]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.servers: SeaweedFS

from saeq.platform.s3_store import S3Store
from saeq.platform.shard_cache import ShardCache
from saeq.specs.manifests import HarvestHook, ShardEntry
from saeq_worker.shard_reads import shard_reader
from tests.servers import s3_server


def rate(label: str, n_bytes: int, fn) -> None:
    t = time.perf_counter()
    fn()
    s = time.perf_counter() - t
    print(f"{label:<44} {n_bytes / s / 1e9:6.2f} GB/s  ({s:.2f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description="The node shard cache's read rates beside S3 and the raw file read.")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--shard-mib", type=int, default=32)
    ap.add_argument("--threads", type=int, default=4)
    a = ap.parse_args()
    with s3_server() as srv, tempfile.TemporaryDirectory(prefix="saeq-bench-cache-") as tmp:
        store = S3Store(srv.endpoint, srv.access_key, srv.secret_key, srv.bucket)
        shards = []
        for i in range(a.shards):
            data = os.urandom(a.shard_mib << 20)
            key = f"jobs/bench/activations/hook/shard-{i:05d}.safetensors"
            store.put(key, data)
            sha256 = hashlib.sha256(data).hexdigest()
            shards.append(ShardEntry(index=i, n_tokens=1, key=key, size=len(data), sha256=sha256))
        hook = HarvestHook(d_model=1, dtype="float32", n_tokens=a.shards, shards=shards, sinks={})
        keys = [s.key for s in shards]
        total = a.shards * (a.shard_mib << 20)
        cache = ShardCache(Path(tmp) / "cache", 1 << 40)

        def read_all(read) -> None:
            with ThreadPoolExecutor(a.threads) as pool:
                assert all(pool.map(lambda k: len(read(k)) > 0, keys))

        def raw(k: str) -> bytes:
            return cache.path(shards[keys.index(k)].sha256).read_bytes()

        print(f"{a.shards} shards x {a.shard_mib} MiB, {a.threads} threads, {os.cpu_count()} CPUs")
        rate("S3 direct (GET + sha256)", total, lambda: read_all(shard_reader(store, hook, None)))
        rate("cache cold (GET + sha256 + write, fsync)", total, lambda: read_all(shard_reader(store, hook, cache)))
        rate("cache warm (read + sha256)", total, lambda: read_all(shard_reader(store, hook, cache)))
        rate("cached files read raw (no sha256)", total, lambda: read_all(raw))
        c = cache.counts
        print(f"counts: {c.misses} misses, {c.hits} hits, {c.bytes_fetched / 1e6:.0f} MB fetched, {c.corrupt} corrupt")


if __name__ == "__main__":
    main()
