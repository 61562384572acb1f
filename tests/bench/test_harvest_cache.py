"""The benches' cached harvest: a harvest whose manifest was never written (a bench killed while
harvesting) is not read but written again; a complete one is reused as it is."""

from __future__ import annotations

import json

import torch

from bench.harvest_cache import cached_harvest
from saeq import keys
from saeq.dev.synthetic import fake_harvest
from saeq.ml.shards import decode_shard
from saeq.platform.store import LocalStore

JOB, HOOK = "b" * 32, "blocks.14.hook_resid_post"


def _write(acts_ND: torch.Tensor, calls: list[int]):
    def write(store: LocalStore) -> dict:
        calls.append(1)
        return fake_harvest(store, JOB, acts_ND, context_len=16, shard_tokens=64, hook=HOOK)

    return write


def _half_written(store: LocalStore) -> None:
    """Shards of another, older harvest, and no manifest: what a killed bench leaves."""
    fake_harvest(store, JOB, torch.full((128, 8), 7.0), context_len=16, shard_tokens=64, hook=HOOK)
    assert not store.exists(keys.manifest(JOB))


def test_a_harvest_without_its_manifest_is_redone_not_read(tmp_path):
    store = LocalStore(tmp_path)
    _half_written(store)
    fresh, calls = torch.randn(192, 8), []
    manifest = cached_harvest(store, JOB, lambda m: True, _write(fresh, calls))
    assert calls == [1] and manifest["n_tokens"] == 192
    assert json.loads(store.get(keys.manifest(JOB))) == manifest  # stored, last
    shards = manifest["hooks"][HOOK]["shards"]
    acts = torch.cat([decode_shard(store.get(s["key"]))["acts"] for s in shards])
    assert torch.equal(acts, fresh)  # the fresh activations, none of the stale 7.0s

    again = cached_harvest(store, JOB, lambda m: True, _write(fresh, calls))
    assert calls == [1] and again == manifest  # complete: reused, not rewritten


def test_a_manifest_whose_shard_is_gone_is_redone(tmp_path):
    store = LocalStore(tmp_path)
    calls: list[int] = []
    first = cached_harvest(store, JOB, lambda m: True, _write(torch.randn(128, 8), calls))
    store.delete(first["hooks"][HOOK]["shards"][1]["key"])
    cached_harvest(store, JOB, lambda m: True, _write(torch.randn(128, 8), calls))
    assert calls == [1, 1]


def test_bench_train_synthetic_store_redoes_a_half_written_cache(tmp_path):
    """bench/train.py's synthetic store with a killed run's shards in its cache (it failed with
    AlreadyExists on the first shard before); its SmolLM2 harvest goes through cached_harvest alike."""
    from bench.train import synthetic_store

    _half_written(LocalStore(tmp_path))
    manifest = synthetic_store(tmp_path, 256, d=8)
    assert manifest["n_tokens"] == 256 and json.loads(LocalStore(tmp_path).get(keys.manifest(JOB))) == manifest
    (shard,) = manifest["hooks"][HOOK]["shards"]
    acts = decode_shard(LocalStore(tmp_path).get(shard["key"]))["acts"]
    assert acts.shape == (256, 8) and not bool((acts == 7.0).any())
    assert synthetic_store(tmp_path, 256, d=8) == manifest  # complete and of that size: kept
