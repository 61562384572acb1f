"""The I/O around `saeq.jobs.train`: read the harvest, resume from the newest checkpoint, store
checkpoints as training goes, export every SAE in SAELens's and sparsify's formats, and publish
the manifest last."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Literal

import saeq
from saeq import keys
from saeq.errors import InvalidSpec
from saeq.jobs.train import TrainProgress, TrainResult, TrainState, train_from_harvest
from saeq.platform.shard_cache import ShardCache
from saeq.platform.store import AlreadyExists, ObjectStore
from saeq.specs import OnlineActivations, TrainSpec
from saeq.specs.costs import check_quota
from saeq.specs.manifests import HarvestManifest, TrainManifest
from saeq_worker.resolve import read_harvest_manifest
from saeq_worker.running import RunningJob
from saeq_worker.shard_reads import shard_reader

MANIFEST_FORMAT = "saeq.train/1"


def _latest_checkpoint(store: ObjectStore, job_id: str) -> TrainState | None:
    found = store.list(keys.checkpoint_prefix(job_id))
    if not found:
        return None
    return TrainState.from_bytes(store.get(found[-1].key))  # keys sort by token count


def _check_quota(spec: TrainSpec, d_in: int, job: RunningJob) -> None:
    """The API checks the team's quota when it knows d_in; this catches the rest (an expansion
    factor over a harvest that had not finished at submit), with the same rules (saeq.specs.costs)."""
    check_quota(spec, job.quota(), team=job.team, d_in=d_in)


def run_train(job: RunningJob, *, shard_cache: ShardCache | None = None) -> str:
    spec: TrainSpec = job.spec
    if isinstance(spec.activations, OnlineActivations):  # activations from the model: no harvest
        from saeq_worker.celery_app import settings
        from saeq_worker.train_online import run_train_online

        return run_train_online(job, cache_dir=settings.cache_dir, local_path_roots=settings.local_path_roots)
    store = job.store
    harvest = read_harvest_manifest(store, spec.activations.job_id, spec.activations.hook, field="spec.activations")
    _check_quota(spec, harvest.hooks[spec.activations.hook].d_model, job)
    resume = _latest_checkpoint(store, job.id)
    if resume is not None:
        job.event("resumed", f"resuming from the checkpoint at {resume.tokens:,} tokens")

    def on_progress(p: TrainProgress) -> None:
        first = next(iter(p.saes.values()))
        figures = {k: first[k] for k in ("loss", "mse", "fvu", "l0", "dead_fraction") if k in first}
        job.report(
            p.tokens / p.total_tokens,
            "train",
            f"{p.tokens:,} of {p.total_tokens:,} tokens",
            tokens=p.tokens,
            tokens_per_s=p.tokens_per_s,
            more=figures,
        )

    def on_checkpoint(state: TrainState) -> None:
        try:
            store.put(keys.train_checkpoint(job.id, state.tokens), state.to_bytes())
        except AlreadyExists:
            pass  # an earlier attempt saved the same state (same data, same arithmetic)
        job.event("checkpoint", f"checkpoint at {state.tokens:,} tokens")

    result = train_from_harvest(
        spec,
        harvest.model_dump(),
        shard_reader(store, harvest.hooks[spec.activations.hook], shard_cache),
        device=job.device,
        devices=_devices(job),
        resume=resume,
        on_progress=on_progress,
        should_stop=job.should_stop,
        on_checkpoint=on_checkpoint,
    )
    job.check()
    job.report(1.0, "export", "writing SAEs", force=True)
    files = _export_saes(job, spec, harvest, result)
    manifest = _manifest(job, spec, harvest, result, files)
    key = job.publish(manifest)
    figures = manifest.result
    first = next(iter(figures["saes"].values()))
    job.report(
        1.0,
        "done",
        f"FVU {first['fvu']:.4f}, L0 {first['l0']:.1f}, dead {first['dead_fraction']:.1%}",
        force=True,
        fvu=first["fvu"],
        l0=first["l0"],
        dead_fraction=first["dead_fraction"],
        tokens=figures["tokens"],
    )
    return key


def _devices(job: RunningJob) -> list[str]:
    """The job's devices (spec.gpus of them), refused naming the field when this pod has fewer GPUs."""
    devices = job.devices
    if len(devices) > 1 and devices[0].startswith("cuda"):
        import torch

        if torch.cuda.device_count() < len(devices):
            raise InvalidSpec(
                f"gpus={len(devices)}, but this worker has {torch.cuda.device_count()} GPU(s)", field="spec.gpus"
            )
    return devices


def _export_saes(job: RunningJob, spec: TrainSpec, harvest: HarvestManifest, result: TrainResult) -> list[dict]:
    """Store every SAE in each format its architecture has; -> the files, for the manifest."""
    store = job.store
    files = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, sae in result.saes.items():
            metadata = {
                "hook_name": spec.activations.hook,
                "model_name": harvest.model["name"],
                "context_size": harvest.context_len,
                "prepend_bos": harvest.prepend_bos,
                "saeq_job_id": job.id,
                "harvest_job_id": harvest.job_id,
            }
            for fmt in _formats(sae.architecture):
                out = Path(tmp, name, fmt)
                sae.save(out, format=fmt, metadata=metadata)
                for path in sorted(out.iterdir()):
                    key = keys.sae_file(job.id, name, fmt, path.name)
                    try:
                        store.put_file(key, path)
                    except AlreadyExists:
                        pass  # written by an attempt that died before its manifest
                    files.append({"sae": name, "format": fmt, "key": key, "size": path.stat().st_size})
    return files


def _manifest(
    job: RunningJob, spec: TrainSpec, harvest: HarvestManifest, result: TrainResult, files: list[dict]
) -> TrainManifest:
    """What the job publishes: its SAEs (where each is stored, its figures), the harvest it read, files."""
    figures = result.to_dict()
    manifest = {
        "format": MANIFEST_FORMAT,
        "kind": "train",
        "job_id": job.id,
        "saeq_version": saeq.__version__,
        "created_at": time.time(),
        "spec": spec.model_dump(mode="json"),
        "harvest": {
            "job_id": harvest.job_id,
            "hook": spec.activations.hook,
            "model": harvest.model,
            "context_len": harvest.context_len,
            "prepend_bos": harvest.prepend_bos,
            "corpus": harvest.corpus,
            "sinks": harvest.hooks[spec.activations.hook].sinks,
        },
        "saes": {
            name: {
                "d_in": sae.d_in,
                "d_sae": sae.d_sae,
                "architecture": sae.architecture,
                "saelens": keys.sae_prefix(job.id, name, "saelens"),
                "sparsify": (
                    keys.sae_prefix(job.id, name, "sparsify") if "sparsify" in _formats(sae.architecture) else None
                ),
                "metrics": figures["saes"][name],
            }
            for name, sae in result.saes.items()
        },
        "result": figures,
        "files": files,
    }
    return TrainManifest.model_validate(manifest)


def _formats(architecture: str) -> tuple[Literal["saelens", "sparsify"], ...]:
    """sparsify's format holds TopK SAEs only."""
    return ("saelens", "sparsify") if architecture == "topk" else ("saelens",)
