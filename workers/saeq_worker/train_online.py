"""The I/O around `saeq.jobs.train_online`: load the model and the corpus, resume from the newest
checkpoint, store checkpoints as training goes, export every SAE, publish the manifest last.
Nothing else is stored: the activations live only as long as their shuffle chunk.

The manifest's `harvest` names this job itself (it read the model): evaluate, label and steer
jobs of its SAEs find the model, hook, context length, sink rule and corpus there as for a stored
harvest; its held-out corpus is the documents after those this job read."""

from __future__ import annotations

from saeq.errors import InvalidSpec
from saeq.jobs.train import TrainResult
from saeq.jobs.train_online import train_online
from saeq.ml.corpus import iter_documents
from saeq.platform.admission import check_local_paths
from saeq.specs import OnlineActivations, TrainSpec
from saeq.specs.costs import check_quota
from saeq_worker.resolve import cached_model
from saeq_worker.running import RunningJob
from saeq_worker.train_outputs import (
    checkpoint_saver,
    export_saes,
    latest_checkpoint,
    progress_reporter,
    report_done,
    train_manifest,
)


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
    resume = latest_checkpoint(job)
    result = train_online(
        spec,
        lm,
        lambda: iter_documents(online.corpus, seed=online.seed, store=job.store),
        device=job.device,
        devices=job.devices,
        resume=resume,
        on_progress=progress_reporter(job, note=" (online)"),
        should_stop=job.should_stop,
        on_checkpoint=checkpoint_saver(job),
    )
    job.check()
    job.report(1.0, "export", "writing SAEs", force=True)
    source = _source(job, online, lm.provenance, result)
    metadata = {
        "hook_name": source["hook"],
        "model_name": source["model"]["name"],
        "context_size": source["context_len"],
        "prepend_bos": source["prepend_bos"],
        "saeq_job_id": job.id,
    }
    key = job.publish(train_manifest(job, spec, source, result, export_saes(job, result, metadata)))
    report_done(job, result)
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
