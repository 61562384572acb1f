"""The `read(key) -> bytes` a train job hands to saeq.ml.activations.HarvestData: a harvest's shards
from the object store, through the node's shard cache when there is one, each checked against the
sha256 its manifest gives."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from saeq.platform.shard_cache import Event, ShardCache, ShardMismatch
from saeq.specs.manifests import HarvestHook
from saeq_worker.settings import WorkerSettings

log = logging.getLogger("saeq.worker")


class Readable(Protocol):
    """The part of an ObjectStore a shard reader uses."""

    def get(self, key: str) -> bytes: ...


def shard_reader(store: Readable, hook: HarvestHook, cache: ShardCache | None) -> Callable[[str], bytes]:
    """read(key) for the shards of one harvested hook; safe to call from several threads at once
    (the store's client and the cache are). A shard whose bytes do not match the manifest fails
    the job with store_error, naming the key: training on other bytes would go unnoticed."""
    expected = {s.key: s.sha256 for s in hook.shards}

    def sha_of(key: str) -> str:
        try:
            return expected[key]
        except KeyError:
            raise ValueError(f"{key!r} is not a shard of this harvest's hook") from None

    if cache is None:

        def read_direct(key: str) -> bytes:
            sha256 = sha_of(key)
            data = store.get(key)
            actual = hashlib.sha256(data).hexdigest()
            if actual != sha256:
                raise ShardMismatch(f"shard {key}: the store holds bytes with sha256 {actual}, the manifest {sha256}")
            return data

        return read_direct

    def read_cached(key: str) -> bytes:
        sha256 = sha_of(key)
        try:
            return cache.get(sha256, lambda: store.get(key))
        except ShardMismatch as e:
            raise ShardMismatch(f"shard {key}: {e} (the manifest's)") from None

    return read_cached


def node_shard_cache(settings: WorkerSettings, *, on_event: Event | None = None) -> ShardCache | None:
    """This node's shard cache per the settings, or None: turned off (`shard_cache_bytes=0`), or a
    `file://` store, whose shards are files this node already reads (a copy would only cost disk)."""
    if settings.shard_cache_bytes <= 0 or not settings.store.startswith("s3://"):
        return None
    root = Path(settings.shard_cache_dir or os.path.join(settings.cache_dir, "shards"))
    try:
        return ShardCache.within_disk(root, settings.shard_cache_bytes, on_event=on_event)
    except OSError as e:  # an unwritable cache dir slows jobs down; it must not fail them
        log.warning("no shard cache at %s (%s): shards are read from the store each time", root, e)
        return None
