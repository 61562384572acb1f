"""The I/O around a synthetic harvest (`source: synthetic`, saeq.jobs.harvest_synthetic): no model
to load; the ground truth (true features, generator parameters) is stored write-once first, then
the shards as a model's harvest stores them (resumed after the last complete one), and the
manifest, naming the truth, last."""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict

import saeq
from saeq import keys
from saeq.jobs.harvest_synthetic import NO_POSITION, synthetic_shards
from saeq.ml.synthetic_truth import generator_model, truth_bytes
from saeq.platform.store import AlreadyExists, ObjectStore
from saeq.specs import HarvestSpec
from saeq.specs.manifests import HarvestManifest
from saeq_worker.harvest import _previous_shards, shards_manifest, store_shard
from saeq_worker.running import RunningJob

GENERATOR = "saeq.ml.synthetic"


def run_synthetic_harvest(job: RunningJob) -> str:
    """-> the manifest key."""
    spec: HarvestSpec = job.spec
    assert spec.synthetic is not None  # the spec fills it for source: synthetic
    store = job.store
    job.report(0.0, "generator", f"{spec.synthetic.n_features} features in {spec.synthetic.d_model} dims", force=True)
    model = generator_model(spec.synthetic.model_dump())
    truth = _store_truth(store, job.id, truth_bytes(model, spec.seed))
    job.check()

    done = _previous_shards(store, job.id, spec)
    medians = {h: float(m["median_norm"]) for h, m in done[0]["meta"].items()} if done else None
    if done:
        job.event(
            "resumed",
            f"resuming after {len(done)} complete shards from earlier attempts",
            shards=len(done),
            tokens=sum(s["n_tokens"] for s in done),
        )
    t0, tokens_at_start = time.monotonic(), sum(s["n_tokens"] for s in done)

    def on_batch(tokens_done: int) -> None:
        rate = (tokens_done - tokens_at_start) / max(time.monotonic() - t0, 1e-9)
        job.report(
            tokens_done / spec.max_tokens,
            "harvest",
            f"{tokens_done:,} of {spec.max_tokens:,} synthetic tokens",
            tokens=tokens_done,
            tokens_per_s=rate,
        )

    shards = list(done)
    for shard in synthetic_shards(
        spec, model, start_shard=len(done), median_norms=medians, should_stop=job.should_abort, on_batch=on_batch
    ):
        shards.append(store_shard(store, job.id, spec, shard))
        job.check(shards=len(shards), tokens=sum(s["n_tokens"] for s in shards))

    tokens = sum(s["n_tokens"] for s in shards)
    factor = spec.sink_norm_factor
    provenance = {"name": "synthetic", "source": "synthetic", "generator": GENERATOR, "saeq_version": saeq.__version__}
    manifest = shards_manifest(
        job.id,
        spec,
        shards,
        tokens,
        provenance,
        spec.synthetic.d_model,
        0,
        context_len=1,
        rule=f"norm > {factor:g} x median_norm (synthetic tokens have no position: {NO_POSITION})",
    )
    manifest["corpus"] = {"source": "synthetic", "n_docs_used": 0}
    manifest["synthetic"] = {
        **truth,
        "generator": asdict(model.cfg),
        "seed": spec.seed,
        "n_features": spec.synthetic.n_features,
        "expected_l0": float(model.firing_probs_F.double().sum()),
    }
    key = job.publish(HarvestManifest.model_validate(manifest))
    job.report(
        1.0,
        "done",
        f"{tokens:,} synthetic tokens in {len(shards)} shards",
        force=True,
        tokens=tokens,
        tokens_per_s=(tokens - tokens_at_start) / max(time.monotonic() - t0, 1e-9),
    )
    return key


def _store_truth(store: ObjectStore, job_id: str, data: bytes) -> dict:
    """Write the truth once (an earlier attempt's copy is the same bytes) -> its key, size, sha256."""
    key = keys.synthetic_truth(job_id)
    try:
        store.put(key, data)
    except AlreadyExists:
        data = store.get(key)
    return {"key": key, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
