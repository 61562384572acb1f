"""What both train adapters (a stored harvest's, saeq_worker.train, and an online one's,
saeq_worker.train_online) do the same way: resume from the newest checkpoint, report progress and
store checkpoints as training goes, export every SAE in each of its formats, and build the
manifest published last."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import saeq
from saeq import keys
from saeq.jobs.train import TrainProgress, TrainResult, TrainState
from saeq.ml.sae.formats import SPARSIFY_ARCHITECTURES, SaeFormat
from saeq.platform.store import AlreadyExists
from saeq.specs import TrainSpec
from saeq.specs.manifests import TrainManifest
from saeq_worker.running import RunningJob

MANIFEST_FORMAT = "saeq.train/1"


def latest_checkpoint(job: RunningJob) -> TrainState | None:
    """The newest checkpoint an earlier attempt of this job stored (keys sort by token count)."""
    found = job.store.list(keys.checkpoint_prefix(job.id))
    state = TrainState.from_bytes(job.store.get(found[-1].key)) if found else None
    if state is not None:
        job.event(
            "resumed", f"resuming from the checkpoint at {state.tokens:,} tokens", tokens=state.tokens, step=state.step
        )
    return state


def progress_reporter(job: RunningJob, *, note: str = "") -> Callable[[TrainProgress], None]:
    """on_progress for train_saes: the first SAE's figures in the job's progress."""

    def on_progress(p: TrainProgress) -> None:
        first = next(iter(p.saes.values()))
        figures = {k: first[k] for k in ("loss", "mse", "fvu", "l0", "dead_fraction") if k in first}
        job.report(
            p.tokens / p.total_tokens,
            "train",
            f"{p.tokens:,} of {p.total_tokens:,} tokens{note}",
            tokens=p.tokens,
            tokens_per_s=p.tokens_per_s,
            more=figures,
        )

    return on_progress


def checkpoint_saver(job: RunningJob) -> Callable[[TrainState], None]:
    """on_checkpoint for train_saes: each state stored under its token count."""

    def on_checkpoint(state: TrainState) -> None:
        try:
            job.store.put(keys.train_checkpoint(job.id, state.tokens), state.to_bytes())
        except AlreadyExists:
            pass  # an earlier attempt saved the same state (same data, same arithmetic)
        job.event("checkpoint", f"checkpoint at {state.tokens:,} tokens")

    return on_checkpoint


def export_saes(job: RunningJob, result: TrainResult, metadata: dict) -> list[dict]:
    """Store every SAE in each format its architecture has, `metadata` in each; -> the files."""
    files = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, sae in result.saes.items():
            for fmt in sae_formats(sae.architecture):
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


def train_manifest(
    job: RunningJob, spec: TrainSpec, source: dict, result: TrainResult, files: list[dict]
) -> TrainManifest:
    """What a train job publishes: its SAEs (where each is stored, its figures), where its
    activations came from (`source`, a HarvestReference), and the files."""
    figures = result.to_dict()
    saes = {
        name: {
            "d_in": sae.d_in,
            "d_sae": sae.d_sae,
            "architecture": sae.architecture,
            "saelens": keys.sae_prefix(job.id, name, "saelens"),
            "sparsify": (
                keys.sae_prefix(job.id, name, "sparsify") if "sparsify" in sae_formats(sae.architecture) else None
            ),
            "metrics": figures["saes"][name] | _recovery_summary(result, name),
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


def report_done(job: RunningJob, result: TrainResult) -> None:
    name, first = next(iter(result.metrics.items()))
    recovered = _recovery_summary(result, name).get("recovery", {})
    found = (
        f", MCC {recovered['mcc']:.3f}, {recovered['n_matched']} of {result.recovery['n_true_features']} "
        f"true features matched"
        if "mcc" in recovered
        else ""
    )
    ci = first.intervals  # empty without held-out tokens: the bare figures

    def figure(key: str, fmt: str) -> str:
        return ci[key].text(fmt) if key in ci else fmt.format(getattr(first, key))

    job.report(
        1.0,
        "done",
        f"FVU {figure('fvu', '{:.4f}')}, L0 {figure('l0', '{:.1f}')}, dead {figure('dead_fraction', '{:.1%}')}{found}",
        force=True,
        fvu=first.fvu,
        l0=first.l0,
        dead_fraction=first.dead_fraction,
        tokens=result.tokens,
        **({"mcc": recovered["mcc"]} if "mcc" in recovered else {}),
    )


def _recovery_summary(result: TrainResult, name: str) -> dict:
    """{"recovery": an SAE's recovery figures without the per-feature lists} on a synthetic
    harvest (result.recovery holds them all), else {}."""
    figures = result.recovery.get("saes", {}).get(name)
    return {"recovery": {k: v for k, v in figures.items() if k != "per_feature"}} if figures else {}


def sae_formats(architecture: str) -> tuple[SaeFormat, ...]:
    """sparsify's format holds TopK SAEs and TopK transcoders only."""
    return ("saelens", "sparsify") if architecture in SPARSIFY_ARCHITECTURES else ("saelens",)
