"""The I/O around `saeq.jobs.evaluate`: find the SAE, its model, hook and sink rule, pack held-out
contexts, keep the metric pass's running sums every so many batches (and each finished check) for
a later attempt (saeq_worker.partials), store metrics.json, plots and a report page, and publish
the manifest last. A transcoder replaces its target hook, a crosscoder every hook it covers (their
training's, or the spec's `target_hook` / `hooks`); the same pass, partials and resume for all."""

from __future__ import annotations

import json
import logging
import math
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from torch import Tensor

import saeq
from saeq import keys
from saeq.checks.run import ChecksResult
from saeq.checks.summary import checks_markdown, checks_summary
from saeq.errors import InvalidSpec
from saeq.jobs import evaluate_report as report
from saeq.jobs.evaluate import METRICS_VERSION, EvalProgress, EvalResult, evaluate_sae
from saeq.jobs.harvest import context_batches
from saeq.ml.corpus import iter_documents
from saeq.ml.sae import TopKCrosscoder
from saeq.ml.sae.crosscoder import layer_report
from saeq.platform.settings import LlmEndpoint
from saeq.specs import EvaluateSpec
from saeq.specs.manifests import EvaluateManifest, TrainManifest
from saeq_worker.evaluate_checks import evaluate_checks, refuse_inapplicable_checks
from saeq_worker.evaluate_compare import compare_with
from saeq_worker.partials import drop_partial, drop_partials, owner, partial_names, put_partial, read_partial
from saeq_worker.resolve import SaeContext, cached_model, read_published_manifest, sae_context, sink_reference
from saeq_worker.running import RunningJob

MANIFEST_FORMAT = "saeq.evaluate/1"
PASS_CHUNKS = 8
"""The metric pass keeps its sums this many times (about): an interruption loses at most an eighth."""
PASS_PREFIX = "evaluate-pass-"

log = logging.getLogger("saeq.worker")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(saeq.__file__).parent
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _store_report(
    job: RunningJob,
    result: EvalResult,
    provenance: dict,
    sae_name: str,
    checks: ChecksResult | None,
    layers: dict | None = None,
) -> list[str]:
    """Store the plots, metrics.json and report.md (the checks' part too); -> the plots' file names."""
    store = job.store
    pngs = report.plots(result, sae_name)
    if checks is not None:
        pngs.update(checks.pngs)
    for name, data in pngs.items():
        store.put(keys.report_file(job.id, name), data, content_type="image/png")
    metrics_doc = {
        **provenance,
        "metrics": result.metrics,
        "intervals": _intervals_doc(result),
        "counts": result.counts,
        "l0_histogram": result.l0_histogram,
        "l0_max": result.l0_max,
        "log_density_histogram": result.log_density_histogram,
        "fvu_by_position": result.fvu_by_position,
        "feature_density": result.feature_density.tolist(),
        "layers": layers,
        "checks": None if checks is None else checks.doc,
    }
    store.put(
        keys.report_file(job.id, "metrics.json"), json.dumps(metrics_doc).encode(), content_type="application/json"
    )
    page = report.markdown(
        result,
        {k: v for k, v in provenance.items() if k != "corpus"},
        [n for n in pngs if checks is None or n not in checks.pngs],
    )
    if checks is not None:
        page += "\n" + checks_markdown(checks.doc, list(checks.pngs))
    store.put(keys.report_file(job.id, "report.md"), page.encode(), content_type="text/markdown")
    return list(pngs)


def _intervals_doc(result: EvalResult) -> dict[str, dict]:
    return {name: est.model_dump(mode="json") for name, est in result.intervals.items()}


def _pass_name(batches: int) -> str:
    return f"{PASS_PREFIX}{batches:06d}.safetensors"


def _keep_pass(job: RunningJob, progress: EvalProgress) -> None:
    """Store the sums so far and drop the previous ones (each holds all before it); then, a safe
    point: a job asked to yield stops here (Preempted)."""
    earlier = partial_names(job, PASS_PREFIX)
    put_partial(job, _pass_name(progress.batches), progress.to_bytes(owner(job)), "application/octet-stream")
    for name in earlier:
        if name != _pass_name(progress.batches):
            drop_partial(job, name)
    job.check(tokens=progress.tokens)


def _finished_pass(job: RunningJob, chunk_batches: int) -> EvalProgress | None:
    """The furthest metric pass an earlier attempt stored whole, this job's and spec's; a `resumed`
    event says where it stood."""
    for name in reversed(partial_names(job, PASS_PREFIX)):
        try:
            progress, meta = EvalProgress.from_bytes(read_partial(job, name))
            if meta != owner(job) or name != _pass_name(progress.batches) or progress.batches % chunk_batches:
                raise ValueError("another job's, spec's or chunking's")
        except ValueError as e:
            log.warning("job %s: partial result %s ignored (%s)", job.id, name, e)
            continue
        job.event(
            "resumed",
            f"metric pass resumed after {progress.tokens:,} tokens summed by earlier attempts",
            chunks_kept=progress.batches // chunk_batches,
            batches=progress.batches,
            tokens=progress.tokens,
        )
        return progress
    return None


def coder_hooks(spec: EvaluateSpec, ctx: SaeContext) -> tuple[str, str | None, tuple[str, ...] | None]:
    """(hook, target_hook, layer_hooks) the coder is evaluated at: the spec's, else its training's
    (a transcoder's target hook, a crosscoder's hooks); saeq.jobs.evaluate_batch refuses what does
    not fit the coder, naming the field."""
    if spec.hooks is not None:
        return spec.hooks[0], spec.target_hook, spec.hooks
    target = spec.target_hook or (ctx.target_hook if ctx.sae.is_transcoder else None)
    layers = ctx.layer_hooks if isinstance(ctx.sae, TopKCrosscoder) else None
    return ctx.hook, target, layers


def _refuse_comparison(job: RunningJob, ctx: SaeContext) -> None:
    """compare_with compares two plain SAEs at one hook: a transcoder or crosscoder on either side
    is refused naming the field (their paired metrics would splice different things)."""
    spec: EvaluateSpec = job.spec
    if spec.compare_with is None:
        return
    if ctx.sae.is_transcoder or isinstance(ctx.sae, TopKCrosscoder):
        raise InvalidSpec(
            f"compare_with compares two plain SAEs; the evaluated SAE is a {ctx.sae.architecture}",
            field="spec.compare_with",
        )
    ref = spec.compare_with.sae
    train_b = read_published_manifest(job.store, ref.job_id, TrainManifest, field="spec.compare_with.sae")
    activations = train_b.spec.get("activations", {})
    if activations.get("target_hook") or activations.get("hooks"):
        kind = "transcoders" if activations.get("target_hook") else "crosscoders"
        raise InvalidSpec(
            f"compare_with compares two plain SAEs; train job {ref.job_id} trained {kind}",
            field="spec.compare_with.sae",
        )


def _layers_doc(result: EvalResult, sae, layer_hooks: tuple[str, ...] | None) -> dict | None:
    """A crosscoder's per-layer figures: FVU of each hook on the evaluated tokens with its 95%
    interval over contexts, decoder norms."""
    if layer_hooks is None or not isinstance(sae, TopKCrosscoder):
        return None
    intervals = [est.model_dump(mode="json") for est in result.fvu_per_layer_intervals or []]
    return {
        **layer_report(sae, None, list(layer_hooks)),
        "fvu_per_layer": result.fvu_per_layer,
        "fvu_per_layer_intervals": intervals,
    }


def run_evaluate(job: RunningJob, *, cache_dir: str, llm_endpoints: Mapping[str, LlmEndpoint]) -> str:
    spec: EvaluateSpec = job.spec
    store = job.store
    job.report(0.0, "loading", "SAE and model", force=True)
    ctx = sae_context(spec, store)
    hook, target_hook, layer_hooks = coder_hooks(spec, ctx)
    sae, sae_name, model_spec, corpus = ctx.sae, ctx.name, ctx.model, ctx.read_corpus()
    context_len, sink_info, provenance_sae = ctx.context_len, ctx.sink_info, ctx.provenance
    _refuse_comparison(job, ctx)
    if spec.checks is not None:
        refuse_inapplicable_checks(spec.checks, sae, layer_hooks)
    lm = cached_model(model_spec, job.device, cache_dir)
    job.check()

    sinks = sink_reference(spec, sink_info)

    def contexts() -> Iterator[Tensor]:
        """The held-out contexts, the same ones in the same order on every call."""
        docs = iter_documents(corpus, seed=ctx.seed(spec.seed), store=store)
        return (
            ids
            for ids, _ in context_batches(
                docs, lm.tokenizer, context_len=context_len, max_tokens=spec.max_tokens, batch_size=spec.batch_size
            )
        )

    def on_batch(start: float, share: float) -> Callable[[int], None]:
        return lambda n: job.report(
            start + share * n / spec.max_tokens,
            "evaluate",
            f"{n:,} tokens",
            tokens=n,
            tokens_per_s=n / max(time.monotonic() - t0, 1e-9),
        )

    n_batches = math.ceil(spec.max_tokens / (spec.batch_size * context_len))
    chunk_batches = max(1, math.ceil(n_batches / PASS_CHUNKS))
    t0 = time.monotonic()
    # Of the progress bar; the checks (evaluate_checks) take from 0.5, a comparison's B pass the rest.
    share = 0.5 if spec.checks is not None or spec.compare_with is not None else 1.0
    result = evaluate_sae(
        sae,
        lm,
        hook,
        contexts(),
        sinks=sinks,
        dense_threshold=spec.dense_threshold,
        chunk_batches=chunk_batches,
        on_chunk=lambda progress: _keep_pass(job, progress),
        resume=_finished_pass(job, chunk_batches),
        should_stop=job.should_stop,
        on_batch=on_batch(0.0, share),
        target_hook=target_hook,
        layer_hooks=layer_hooks,
    )
    job.check()
    comparison = None
    if spec.compare_with is not None:
        t0 = time.monotonic()
        b_share = 0.0 if spec.checks is not None else 0.5
        comparison = compare_with(
            job, ctx, lm, sinks, contexts, result, on_batch=on_batch(0.5, b_share), matching_at=0.5 + b_share
        )
        job.check()
    checks = None
    if spec.checks is not None:
        checks = evaluate_checks(
            job, spec.checks, ctx, lm, sinks, cache_dir=cache_dir, llm_endpoints=llm_endpoints, layer_hooks=layer_hooks
        )
        job.check()

    provenance = {
        "metrics_version": METRICS_VERSION,
        "saeq_version": saeq.__version__,
        "saeq_git_commit": _git_commit(),
        "model": lm.provenance,
        "hook": hook,
        "splice": result.splice,
        "sae": provenance_sae,
        "corpus": corpus.model_dump(mode="json"),
        "sink_rule": None if sinks is None else {"median_norm": sinks.median_norm, "norm_factor": sinks.norm_factor},
    }
    layers = _layers_doc(result, sae, layer_hooks)
    pngs = _store_report(job, result, provenance, sae_name, checks, layers)
    manifest = {
        "format": MANIFEST_FORMAT,
        "kind": "evaluate",
        "job_id": job.id,
        "created_at": time.time(),
        "spec": spec.model_dump(mode="json"),
        **provenance,
        "sae": {**provenance_sae, "name": sae_name},
        "metrics": result.metrics,
        "counts": result.counts,
        "intervals": _intervals_doc(result),
        "checks": None if checks is None else checks_summary(checks.doc),
        "report_key": keys.report_file(job.id, "report.md"),
        "metrics_key": keys.report_file(job.id, "metrics.json"),
        "plots": [keys.report_file(job.id, n) for n in pngs],
        "comparison": None if comparison is None else comparison.model_dump(mode="json"),
        "layers": layers,
    }
    key = job.publish(EvaluateManifest.model_validate(manifest))
    drop_partials(job)
    m, ci = result.metrics, result.intervals
    job.report(
        1.0,
        "done",
        f"FVU {ci['fvu'].text('{:.4f}')}, L0 {m['l0']:.1f}, CE recovered {ci['ce_loss_recovered'].text('{:.4f}')}",
        force=True,
        fvu=m["fvu"],
        l0=m["l0"],
        ce_loss_recovered=m["ce_loss_recovered"],
    )
    return key
