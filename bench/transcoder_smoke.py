"""bench/transcoder.py --smoke's harvest: a tiny random Llama's MLP input and output, into a local store."""

from __future__ import annotations

import json
from pathlib import Path

from saeq import keys
from saeq.platform.store import LocalStore

HOOK, TARGET = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"

# --- the smoke harvest -----------------------------------------------------------------------------


def smoke_harvest(home: Path) -> tuple[str, dict]:
    """A tiny random Llama's MLP input and output, harvested here into a local store: the job id and
    the manifest (the fields saeq.ml.activations and this script read)."""
    from saeq.jobs.harvest import harvest_activations
    from saeq.ml.corpus import iter_documents
    from saeq.ml.models import load_model
    from saeq.ml.shards import write_shard_bytes
    from saeq.specs import BuiltinCorpus, HarvestSpec, ModelSpec
    from tests.tiny_model import save_tiny_llama

    job, hook_list = "5" * 32, [HOOK, TARGET]
    model_dir = save_tiny_llama(home / "tiny-llama", n_layers=2, d_model=32)
    corpus = BuiltinCorpus(max_docs=400)
    spec = HarvestSpec(
        model=ModelSpec(name=str(model_dir)),
        corpus=corpus,
        hooks=hook_list,
        max_tokens=6_144,
        context_len=64,
        batch_size=8,
        shard_tokens=2_048,
        dtype="float32",
    )
    lm = load_model(spec.model, cache_dir=str(home / "cache"))
    store, entries, n_docs = LocalStore(home / "store"), {h: [] for h in hook_list}, 0
    for shard in harvest_activations(spec, lm, iter_documents(spec.corpus, seed=spec.seed)):
        for h in hook_list:
            key = keys.harvest_shard(job, h, shard.index)
            store.put(key, write_shard_bytes(shard.tensors[h], shard.metadata(h)))
            entries[h].append((shard, key))
        n_docs = max(n_docs, int(shard.tensors[hook_list[0]]["doc_ids"].max()) + 1)
    hooks = {}
    for h, shards in entries.items():
        s0 = shards[0][0].sinks[h]
        hooks[h] = {
            "d_model": lm.d_model,
            "n_tokens": sum(s.n_tokens for s, _ in shards),
            "shards": [{"index": s.index, "n_tokens": s.n_tokens, "key": k} for s, k in shards],
            "sinks": {"median_norm": s0.median_norm, "norm_factor": s0.norm_factor},
        }
    manifest = {
        "format": "saeq.harvest/1",
        "kind": "harvest",
        "job_id": job,
        "spec": spec.model_dump(mode="json"),
        "d_model": lm.d_model,
        "context_len": spec.context_len,
        "n_tokens": hooks[hook_list[0]]["n_tokens"],
        "corpus": {**corpus.model_dump(mode="json"), "n_docs_used": n_docs},
        "hooks": hooks,
    }
    store.put(keys.manifest(job), json.dumps(manifest).encode())
    return job, manifest
