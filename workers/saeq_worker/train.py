"""The I/O around `saeq.jobs.train`: read the harvest through the node's shard cache, resume from
the newest checkpoint, store checkpoints as training goes, export every SAE in SAELens's and
sparsify's formats, and publish the manifest last (saeq_worker.train_outputs, shared with the
online adapter)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from saeq.errors import InvalidSpec, JobError
from saeq.jobs.train import train_from_harvest
from saeq.jobs.train_recovery import synthetic_recovery
from saeq.ml.synthetic_truth import SyntheticTruth, read_truth
from saeq.platform.shard_cache import ShardCache
from saeq.specs import ActivationsRef, OnlineActivations, TrainSpec
from saeq.specs.costs import check_quota
from saeq.specs.manifests import HarvestManifest
from saeq_worker.resolve import read_harvest_manifest
from saeq_worker.running import RunningJob
from saeq_worker.shard_reads import shard_reader
from saeq_worker.train_outputs import (
    checkpoint_saver,
    export_saes,
    latest_checkpoint,
    progress_reporter,
    report_done,
    train_manifest,
)

RECOVERY_TOKENS = 1 << 20
"""At most this many held-out rows score recovery (validation_tokens of them, below it)."""


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
    hooks = spec.activations.hooks or (spec.activations.hook,)  # a crosscoder's rows: every hook's, side by side
    harvest = read_harvest_manifest(store, spec.activations.job_id, hooks[0], field="spec.activations")
    _check_quota(spec, harvest.hooks[hooks[0]].d_model * len(hooks), job)
    resume = latest_checkpoint(job)
    result = train_from_harvest(
        spec,
        harvest.model_dump(),
        _reader(store, harvest, spec, shard_cache),
        device=job.device,
        devices=_devices(job),
        resume=resume,
        on_progress=progress_reporter(job),
        should_stop=job.should_abort,
        should_yield=job.should_yield,  # preempted: a checkpoint at the current step, then Preempted
        on_checkpoint=checkpoint_saver(job),
    )
    job.check()
    if harvest.synthetic is not None:  # a known truth: how well each SAE recovered it
        job.report(1.0, "recovery", "scoring the SAEs against the synthetic truth", force=True)
        truth = _synthetic_truth(store, harvest)
        result.recovery = synthetic_recovery(result.saes, truth, n_tokens=min(spec.validation_tokens, RECOVERY_TOKENS))
    job.report(1.0, "export", "writing SAEs", force=True)
    hook = hooks[0]
    metadata = {
        "hook_name": hook,
        "model_name": harvest.model["name"],
        "context_size": harvest.context_len,
        "prepend_bos": harvest.prepend_bos,
        "saeq_job_id": job.id,
        "harvest_job_id": harvest.job_id,
        **({"hook_name_out": spec.activations.target_hook} if spec.activations.target_hook else {}),
        **({"hook_names": list(hooks)} if spec.activations.hooks else {}),  # a crosscoder's layers, in its rows' order
    }
    files = export_saes(job, result, metadata)
    key = job.publish(train_manifest(job, spec, _source(harvest, hook), result, files))
    report_done(job, result)
    return key


def _reader(store, harvest: HarvestManifest, spec: TrainSpec, cache: ShardCache | None) -> Callable[[str], bytes]:
    """read(key) for the input hook's shards, and the target hook's too for a transcoder's pairs."""
    assert isinstance(spec.activations, ActivationsRef)
    if spec.activations.hooks:
        return _layers_reader(store, harvest, spec.activations.hooks, cache)
    read = shard_reader(store, harvest.hooks[spec.activations.hook], cache)
    target = spec.activations.target_hook
    if target is None:
        return read
    if target not in harvest.hooks:
        raise InvalidSpec(
            f"harvest {harvest.job_id} has no hook {target!r}; it has {sorted(harvest.hooks)}",
            field="spec.activations.target_hook",
        )
    read_target = shard_reader(store, harvest.hooks[target], cache)
    target_keys = {s.key for s in harvest.hooks[target].shards}
    return lambda key: read_target(key) if key in target_keys else read(key)


def _layers_reader(
    store, harvest: HarvestManifest, hooks: tuple[str, ...], cache: ShardCache | None
) -> Callable[[str], bytes]:
    """read(key) over the shards of every hook a crosscoder reads (each checked by its own hook's
    sha256), InvalidSpec naming spec.activations.hooks for a hook the harvest lacks."""
    readers = {}
    for hook in hooks:
        if hook not in harvest.hooks:
            raise InvalidSpec(
                f"harvest {harvest.job_id} has no hook {hook!r}; it has {sorted(harvest.hooks)}",
                field="spec.activations.hooks",
            )
        read = shard_reader(store, harvest.hooks[hook], cache)
        readers |= {s.key: read for s in harvest.hooks[hook].shards}
    return lambda key: readers[key](key)


def _synthetic_truth(store, harvest: HarvestManifest) -> SyntheticTruth:
    """The truth a synthetic harvest stored, checked against the sha256 its manifest names."""
    entry = harvest.synthetic
    assert entry is not None
    data = store.get(entry.key)
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        raise JobError(f"the synthetic truth {entry.key} of harvest {harvest.job_id} does not match its sha256")
    return read_truth(data)


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


def _source(harvest: HarvestManifest, hook: str) -> dict:
    """What the manifest records of the harvest the activations came from (a HarvestReference)."""
    return {
        "job_id": harvest.job_id,
        "hook": hook,
        "model": harvest.model,
        "context_len": harvest.context_len,
        "prepend_bos": harvest.prepend_bos,
        "corpus": harvest.corpus,
        "sinks": harvest.hooks[hook].sinks,
    }
