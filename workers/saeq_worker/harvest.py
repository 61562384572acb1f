"""The I/O around `saeq.jobs.harvest`: load model and corpus, resume after the last complete
shard, write shards (write-once, atomic), report progress, and publish the manifest last.
A spec with `slices` > 1 runs split across workers (saeq_worker.harvest_split); one with
`source: synthetic` draws its tokens from a generator (saeq_worker.harvest_synthetic)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import saeq
from saeq import keys
from saeq.errors import InvalidSpec
from saeq.jobs.harvest import Shard, harvest_activations
from saeq.ml.corpus import iter_documents
from saeq.ml.models import LoadedModel
from saeq.ml.placement import gpu_memory_figures, reset_gpu_memory_peak
from saeq.ml.shards import read_shard, read_shard_metadata, write_shard_bytes
from saeq.platform.store import AlreadyExists, ObjectStore
from saeq.specs import HarvestSpec
from saeq.specs.manifests import HarvestManifest
from saeq_worker.resolve import loaded_model
from saeq_worker.running import RunningJob

MANIFEST_FORMAT = "saeq.harvest/1"
SendSlice = Callable[[str, int], None]


def run_harvest(job: RunningJob, *, cache_dir: str, send_slice: SendSlice | None = None) -> str:
    """-> the manifest key. `send_slice(job_id, index)` queues a slice of a split harvest."""
    spec: HarvestSpec = job.spec
    store = job.store
    if spec.source == "synthetic":  # no model: tokens from a generator with known features
        from saeq_worker.harvest_synthetic import run_synthetic_harvest

        return run_synthetic_harvest(job)
    if spec.slices > 1:
        from saeq_worker.harvest_split import run_split_harvest

        if send_slice is None:
            raise ValueError("a split harvest needs send_slice")
        return run_split_harvest(job, cache_dir=cache_dir, send_slice=send_slice)
    started = time.monotonic()
    job.report(0.0, "loading model", spec.model.name, force=True)
    lm, cold = loaded_model(spec.model, job.device, cache_dir)
    model_load_s = time.monotonic() - started
    reset_gpu_memory_peak(lm.model)  # the model may be cached from an earlier job: count this one's
    job.check()

    done = _previous_shards(store, job.id, spec)
    start = len(done)
    medians = {h: float(m["median_norm"]) for h, m in done[0]["meta"].items()} if done else None
    if start:
        job.event(
            "resumed",
            f"resuming after {start} complete shards from earlier attempts",
            shards=start,
            tokens=sum(s["n_tokens"] for s in done),
        )

    t0, tokens_at_start = time.monotonic(), sum(s["n_tokens"] for s in done)
    # For cost plans (saeq.platform.plan_startup): what came before the first token, and whether
    # this job paid for loading its model into the process (a cold start) or found it loaded.
    startup = {"startup_s": t0 - started, "model_load_s": model_load_s, "cold_start": float(cold)}
    budget = spec.max_tokens

    def on_batch(tokens_done: int) -> None:
        rate = (tokens_done - tokens_at_start) / max(time.monotonic() - t0, 1e-9)
        job.report(
            tokens_done / budget,
            "harvest",
            f"{tokens_done:,} of {budget:,} tokens",
            tokens=tokens_done,
            tokens_per_s=rate,
        )

    docs = iter_documents(spec.corpus, seed=spec.seed, store=store)
    shards = list(done)
    for shard in harvest_activations(
        spec, lm, docs, start_shard=start, median_norms=medians, should_stop=job.should_abort, on_batch=on_batch
    ):
        shards.append(store_shard(store, job.id, spec, shard))
        # The safe point of a preemption: every shard so far is stored, and the next attempt skips them.
        job.check(shards=len(shards), tokens=sum(s["n_tokens"] for s in shards))

    tokens = sum(s["n_tokens"] for s in shards)
    if tokens == 0:
        raise empty_corpus(spec)
    manifest = harvest_manifest(job.id, spec, lm, shards, tokens)
    key = job.publish(HarvestManifest.model_validate(manifest))
    elapsed = time.monotonic() - t0
    job.report(
        1.0,
        "done",
        f"{tokens:,} tokens in {len(shards)} shards",
        force=True,
        tokens=tokens,
        tokens_per_s=(tokens - tokens_at_start) / max(elapsed, 1e-9),
        more={**startup, **gpu_memory_figures(lm.model)},  # on CUDA: peak GPU memory of this harvest
    )
    return key


def empty_corpus(spec: HarvestSpec) -> InvalidSpec:
    return InvalidSpec(
        f"the corpus yielded no complete context; it is empty or shorter than context_len={spec.context_len} tokens",
        field="spec.corpus",
    )


def store_shard(store: ObjectStore, job_id: str, spec: HarvestSpec, shard: Shard) -> dict:
    """Write one shard for every hook -> its manifest entry (keys, sizes, checksums, metadata)."""
    entry = {
        "index": shard.index,
        "n_tokens": shard.n_tokens,
        "hooks": {},
        "meta": {},
        "doc_ids": set(shard.tensors[spec.hooks[0]]["doc_ids"].unique().tolist()),
    }
    for hook in spec.hooks:
        data = write_shard_bytes(shard.tensors[hook], shard.metadata(hook))
        key = keys.harvest_shard(job_id, hook, shard.index)
        try:
            store.put(key, data)
        except AlreadyExists:
            # An earlier attempt wrote this hook's shard before dying; puts are atomic and the
            # bytes deterministic, so the stored object is the complete shard.
            data = store.get(key)
        entry["hooks"][hook] = {"key": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        entry["meta"][hook] = shard.metadata(hook)
    return entry


def _previous_shards(
    store: ObjectStore, job_id: str, spec: HarvestSpec, start: int = 0, stop: int = 1 << 30
) -> list[dict]:
    """Shards `start, start + 1, ...` (before `stop`) an earlier attempt completed for every hook,
    in order, read back with checksums."""
    out: list[dict] = []
    for index in range(start, stop):
        entry = {"index": index, "hooks": {}, "meta": {}, "doc_ids": set()}
        for hook in spec.hooks:
            key = keys.harvest_shard(job_id, hook, index)
            if not store.exists(key):
                return out
            data = store.get(key)
            meta = read_shard_metadata(data)
            entry["hooks"][hook] = {"key": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            entry["meta"][hook] = meta
            entry["n_tokens"] = int(meta["n_tokens"])
            if not entry["doc_ids"]:
                entry["doc_ids"] = set(read_shard(data)["doc_ids"].unique().tolist())
        out.append(entry)
    return out


def harvest_manifest(job_id: str, spec: HarvestSpec, lm: LoadedModel, shards: list[dict], tokens: int) -> dict:
    """The job's manifest from every shard's entry: the sink rule's reference is shard 0's median
    norm, and the counts are the sums of the shards' (each counted against that median)."""
    return shards_manifest(job_id, spec, shards, tokens, lm.provenance, lm.d_model, lm.n_layers)


def shards_manifest(
    job_id: str,
    spec: HarvestSpec,
    shards: list[dict],
    tokens: int,
    model: dict,
    d_model: int,
    n_layers: int,
    *,
    context_len: int | None = None,
    rule: str | None = None,
) -> dict:
    """harvest_manifest's body, for any source of rows: `model` is the provenance recorded,
    `context_len` (None: the spec's) the tokens per context, `rule` (None: the usual) the sink
    rule as the manifest states it."""
    context_len = context_len or spec.context_len
    docs = set().union(*(s["doc_ids"] for s in shards)) - {-1}
    hooks = {}
    for hook in spec.hooks:
        metas = [s["meta"][hook] for s in shards]
        n0 = sum(int(m["n_position0"]) for m in metas)
        n_out = sum(int(m["n_outliers"]) for m in metas)
        median, factor = float(metas[0]["median_norm"]), spec.sink_norm_factor
        hooks[hook] = {
            "d_model": d_model,
            "dtype": spec.dtype,
            "n_tokens": tokens,
            "shards": [{"index": s["index"], "n_tokens": s["n_tokens"], **s["hooks"][hook]} for s in shards],
            "sinks": {
                "rule": rule or f"position == 0 or norm > {factor:g} x median_norm",
                "median_norm": median,
                "norm_factor": factor,
                "n_position_zero": n0,
                "n_norm_outliers": n_out,
                "n_sinks": n0 + n_out,
            },
        }
    return {
        "format": MANIFEST_FORMAT,
        "kind": "harvest",
        "job_id": job_id,
        "saeq_version": saeq.__version__,
        "created_at": time.time(),
        "spec": spec.model_dump(mode="json"),
        "model": model,
        "d_model": d_model,
        "n_layers": n_layers,
        "corpus": {**spec.corpus.model_dump(mode="json"), "n_docs_used": len(docs)},
        "context_len": context_len,
        "prepend_bos": spec.prepend_bos,
        "dtype": spec.dtype,
        "n_tokens": tokens,
        "n_contexts": tokens // context_len,
        "hooks": hooks,
    }
