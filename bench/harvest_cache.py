"""The benches' cached harvests (a local store under ~/.cache/saeq/bench): a harvest counts as
cached only once its manifest is written (the manifest goes last, as in the worker's harvest) and
every shard it lists is there at its size. A harvest without its manifest (a bench killed while
harvesting) is absent: its objects are deleted before it is written again, since the store is
write-once and its half-written shards must never be read."""

from __future__ import annotations

import json
from collections.abc import Callable

from saeq import keys
from saeq.platform.store import LocalStore, MissingObject


def complete_harvest(store: LocalStore, job_id: str) -> dict | None:
    """The manifest of the harvest stored under `job_id` if it is complete, else None (and then
    nothing of that job is left in the store)."""
    try:
        manifest = json.loads(store.get(keys.manifest(job_id)))
        shards = [s for hook in manifest["hooks"].values() for s in hook["shards"]]
        if all(store.exists(s["key"]) and ("size" not in s or store.size(s["key"]) == s["size"]) for s in shards):
            return manifest
    except (MissingObject, json.JSONDecodeError, KeyError, TypeError):
        pass
    clear_job(store, job_id)
    return None


def clear_job(store: LocalStore, job_id: str) -> int:
    """Delete every object of `job_id`, its manifest first (so a crash midway leaves it absent,
    not complete); the number deleted."""
    store.delete(keys.manifest(job_id))
    stale = store.list(keys.job_prefix(job_id).rstrip("/") + "/")
    for obj in stale:
        store.delete(obj.key)
    return len(stale)


def cached_harvest(
    store: LocalStore, job_id: str, fits: Callable[[dict], bool], write: Callable[[LocalStore], dict]
) -> dict:
    """The cached harvest of `job_id` if it is complete and `fits` it; else `write(store)` (which
    writes the shards and returns the manifest) into a cleared job, and the manifest stored last."""
    manifest = complete_harvest(store, job_id)
    if manifest is not None and fits(manifest):
        return manifest
    if manifest is not None:
        clear_job(store, job_id)
    manifest = write(store)
    store.put(keys.manifest(job_id), json.dumps(manifest, indent=1).encode())
    return manifest
