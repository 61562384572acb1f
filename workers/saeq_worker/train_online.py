"""The I/O around `saeq.jobs.train_online`: load the model and the corpus, resume from the newest
checkpoint, store checkpoints as training goes, export every SAE, publish the manifest last.
Nothing else is stored: the activations live only as long as their shuffle chunk.

The manifest's `harvest` names this job itself (it read the model): evaluate, label and steer
jobs of its SAEs find the model, hook, context length, sink rule and corpus there as for a stored
harvest; its held-out corpus is the documents after those this job read."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import saeq
from saeq import keys
from saeq.errors import InvalidSpec
from saeq.jobs.train import TrainProgress, TrainResult, TrainState
from saeq.jobs.train_online import train_online
from saeq.ml.corpus import iter_documents
from saeq.ml.sae.formats import SaeFormat
from saeq.platform.admission import check_local_paths
from saeq.platform.store import AlreadyExists
from saeq.specs import OnlineActivations, TrainSpec
from saeq.specs.costs import check_quota
from saeq.specs.manifests import TrainManifest
from saeq_worker.resolve import cached_model
from saeq_worker.running import RunningJob

MANIFEST_FORMAT = "saeq.train/1"


def run_train_online(job: RunningJob, *, cache_dir: str, local_path_roots: list[str]) -> str:
    spec: TrainSpec = job.spec
    online = spec.activations
    assert isinstance(online, OnlineActivations)  # run_train dispatches on the source
    if spec.gpus > 1 and spec.parallel == "data":
        raise InvalidSpec("online training is not data-parallel: use parallel='sweep'", field="spec.parallel")
    # The model was checked against the roots at submit; the deployment may allow fewer since.
    check_local_paths(online.model, local_path_roots, prefix="spec.activations.model")
    job.report(0.0, "loading model", online.model.name, force=True)
    lm = cached_model(online.model, job.device, cache_dir)
    check_quota(spec, job.quota(), team=job.team, d_in=lm.d_model)
    job.check()
    found = job.store.list(keys.checkpoint_prefix(job.id))
    resume = TrainState.from_bytes(job.store.get(found[-1].key)) if found else None  # keys sort by tokens
    if resume is not None:
        job.event("resumed", f"resuming from the checkpoint at {resume.tokens:,} tokens")

    def on_progress(p: TrainProgress) -> None:
        first = next(iter(p.saes.values()))
        figures = {k: first[k] for k in ("loss", "mse", "fvu", "l0", "dead_fraction") if k in first}
        job.report(
            p.tokens / p.total_tokens,
            "train",
            f"{p.tokens:,} of {p.total_tokens:,} tokens (online)",
            tokens=p.tokens,
            tokens_per_s=p.tokens_per_s,
            more=figures,
        )

    def on_checkpoint(state: TrainState) -> None:
        try:
            job.store.put(keys.train_checkpoint(job.id, state.tokens), state.to_bytes())
        except AlreadyExists:
            pass  # an earlier attempt saved the same state (same data, same arithmetic)
        job.event("checkpoint", f"checkpoint at {state.tokens:,} tokens")

    result = train_online(
        spec,
        lm,
        lambda: iter_documents(online.corpus, seed=online.seed, store=job.store),
        device=job.device,
        devices=job.devices,
        resume=resume,
        on_progress=on_progress,
        should_stop=job.should_stop,
        on_checkpoint=on_checkpoint,
    )
    job.check()
    job.report(1.0, "export", "writing SAEs", force=True)
    source = _source(job, online, lm.provenance, result)
    key = job.publish(_manifest(job, spec, source, result, _export_saes(job, source, result)))
    first = next(iter(result.metrics.values()))
    job.report(
        1.0,
        "done",
        f"FVU {first.fvu:.4f}, L0 {first.l0:.1f}, dead {first.dead_fraction:.1%}",
        force=True,
        fvu=first.fvu,
        l0=first.l0,
        dead_fraction=first.dead_fraction,
        tokens=result.tokens,
    )
    return key


def _source(job: RunningJob, online: OnlineActivations, model: dict, result: TrainResult) -> dict:
    """What the manifest records of where the activations came from (a HarvestReference)."""
    sinks = result.data["sinks"]["train"]
    return {
        "job_id": job.id,
        "hook": online.hook,
        "model": model,
        "context_len": online.context_len,
        "prepend_bos": online.prepend_bos,
        "corpus": {**online.corpus.model_dump(mode="json"), "n_docs_used": result.data["docs_read"]},
        "sinks": {
            "rule": f"position == 0 or norm > {sinks['norm_factor']:g} x median_norm",
            "median_norm": sinks["median_norm"],
            "norm_factor": sinks["norm_factor"],
            "n_position_zero": sinks["n_position0"],
            "n_norm_outliers": sinks["n_outliers"],
            "n_sinks": sinks["n_sinks"],
        },
    }


def _export_saes(job: RunningJob, source: dict, result: TrainResult) -> list[dict]:
    """Store every SAE in each format its architecture has (as saeq_worker.train); -> the files."""
    files = []
    metadata = {
        "hook_name": source["hook"],
        "model_name": source["model"]["name"],
        "context_size": source["context_len"],
        "prepend_bos": source["prepend_bos"],
        "saeq_job_id": job.id,
    }
    with tempfile.TemporaryDirectory() as tmp:
        for name, sae in result.saes.items():
            for fmt in _formats(sae.architecture):
                out = Path(tmp, name, fmt)
                sae.save(out, format=fmt, metadata=metadata)
                for path in sorted(out.iterdir()):
                    key = keys.sae_file(job.id, name, fmt, path.name)
                    try:
                        job.store.put_file(key, path)
                    except AlreadyExists:
                        pass  # written by an attempt that died before its manifest
                    files.append({"sae": name, "format": fmt, "key": key, "size": path.stat().st_size})
    return files


def _manifest(job: RunningJob, spec: TrainSpec, source: dict, result: TrainResult, files: list[dict]) -> TrainManifest:
    figures = result.to_dict()
    saes = {
        name: {
            "d_in": sae.d_in,
            "d_sae": sae.d_sae,
            "architecture": sae.architecture,
            "saelens": keys.sae_prefix(job.id, name, "saelens"),
            "sparsify": keys.sae_prefix(job.id, name, "sparsify") if "sparsify" in _formats(sae.architecture) else None,
            "metrics": figures["saes"][name],
        }
        for name, sae in result.saes.items()
    }
    return TrainManifest.model_validate(
        {
            "format": MANIFEST_FORMAT,
            "kind": "train",
            "job_id": job.id,
            "saeq_version": saeq.__version__,
            "created_at": time.time(),
            "spec": spec.model_dump(mode="json"),
            "harvest": source,
            "saes": saes,
            "result": figures,
            "files": files,
        }
    )


def _formats(architecture: str) -> tuple[SaeFormat, ...]:
    """sparsify's format holds TopK SAEs only."""
    return ("saelens", "sparsify") if architecture == "topk" else ("saelens",)
