"""The I/O around `saeq.jobs.evaluate`: find the SAE, its model, hook and sink rule, pack held-out
contexts, store metrics.json, plots and a report page, and publish the manifest last."""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import saeq
from saeq import keys
from saeq.checks.summary import checks_markdown, checks_summary
from saeq.client import report
from saeq.errors import InvalidSpec, NotFound
from saeq.jobs.evaluate import METRICS_VERSION, SinkReference, evaluate_sae
from saeq.jobs.harvest import context_batches
from saeq.ml.corpus import iter_documents
from saeq.ml.sae import SparseAutoencoder
from saeq.platform.admission import check_local_paths
from saeq.platform.settings import LlmEndpoint
from saeq.platform.store import ObjectStore
from saeq.specs import EvaluateSpec, ModelSpec
from saeq_worker.celery_app import settings
from saeq_worker.harvest import cached_model
from saeq_worker.running import RunningJob, read_published_manifest

MANIFEST_FORMAT = "saeq.evaluate/1"


def load_trained_sae(
    store: ObjectStore, job_id: str, name: str | None, *, field: str
) -> tuple[SparseAutoencoder, str, dict]:
    """(SAE, its name, the train manifest) of a train job's output."""
    manifest = read_published_manifest(store, job_id, "train", field=field)
    name = name or next(iter(manifest["saes"]))
    if name not in manifest["saes"]:
        raise InvalidSpec(
            f"train job {job_id} has no SAE {name!r}; it has {sorted(manifest['saes'])}", field=f"{field}.name"
        )
    with tempfile.TemporaryDirectory() as tmp:
        prefix = manifest["saes"][name]["saelens"]
        for info in store.list(prefix):
            store.get_file(info.key, Path(tmp, info.key.rsplit("/", 1)[1]))
        return SparseAutoencoder.load(tmp), name, manifest


@dataclass
class SaeContext:
    """An SAE and what it reads: model, hook point, held-out corpus, context length, sink rule."""

    sae: SparseAutoencoder
    name: str
    model: ModelSpec
    hook: str
    corpus: object
    context_len: int
    sink_info: dict | None
    provenance: dict
    corpus_seed: int | None = None
    """Seed of the builtin corpus's document order when `corpus` is the harvest's held-out part (the
    harvest's seed, so held-out stays held out); None: the job's own seed."""

    def seed(self, spec_seed: int) -> int:
        return spec_seed if self.corpus_seed is None else self.corpus_seed


def sae_context(spec, store: ObjectStore) -> SaeContext:
    """For a spec with `sae`, `model`, `hook` and maybe `corpus` and `context_len` (evaluate,
    label, steer): what the spec names, falling back to the SAE's train and harvest manifests."""
    if spec.sae.source == "job":
        sae, name, train = load_trained_sae(store, spec.sae.job_id, spec.sae.name, field="spec.sae")
        harvest = train["harvest"]
        model = spec.model or ModelSpec(
            **{k: harvest["model"].get(k) for k in ("name", "revision", "gguf_file", "dtype")}
        )
        # The harvest's model passed the roots when it ran; the deployment may allow fewer since.
        check_local_paths(model, settings.local_path_roots, prefix="spec.model")
        corpus, corpus_seed = getattr(spec, "corpus", None), None
        if corpus is None:
            corpus = held_out_corpus(harvest["corpus"])
            harvested = read_published_manifest(store, harvest["job_id"], "harvest", field="spec.sae")
            corpus_seed = harvested["spec"]["seed"]
        return SaeContext(
            sae,
            name,
            model,
            spec.hook or harvest["hook"],
            corpus,
            getattr(spec, "context_len", None) or harvest["context_len"],
            harvest["sinks"],
            {
                "source": "job",
                "job_id": spec.sae.job_id,
                "name": name,
                "architecture": sae.architecture,
                "d_sae": sae.d_sae,
            },
            corpus_seed,
        )
    path = Path(spec.sae.path)
    if not path.is_dir():
        raise NotFound(f"no SAE directory {path} on the worker", field="spec.sae.path")
    sae = SparseAutoencoder.load(path)
    return SaeContext(
        sae,
        path.name,
        spec.model,
        spec.hook,
        getattr(spec, "corpus", None),
        getattr(spec, "context_len", None) or 128,
        None,
        {"source": "path", "path": str(path), "architecture": sae.architecture, "d_sae": sae.d_sae},
    )


def sink_reference(spec, sink_info: dict | None) -> SinkReference | None:
    """The sink rule to apply, or None when the spec turns it off."""
    if not spec.sinks.exclude:
        return None
    if sink_info is None:
        raise InvalidSpec(
            "an imported SAE has no harvest to take the sink rule's median norm "
            "from; set sinks.exclude=false or use a trained SAE",
            field="spec.sinks",
        )
    return SinkReference(sink_info["median_norm"], spec.sinks.norm_factor or sink_info["norm_factor"])


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(saeq.__file__).parent
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_evaluate(job: RunningJob, *, cache_dir: str, llm_endpoints: Mapping[str, LlmEndpoint]) -> str:
    spec: EvaluateSpec = job.spec
    store = job.store
    job.report(0.0, "loading", "SAE and model", force=True)
    ctx = sae_context(spec, store)
    sae, sae_name, model_spec, hook, corpus = ctx.sae, ctx.name, ctx.model, ctx.hook, ctx.corpus
    context_len, sink_info, provenance_sae = ctx.context_len, ctx.sink_info, ctx.provenance
    lm = cached_model(model_spec, job.device, cache_dir)
    job.check()

    sinks = sink_reference(spec, sink_info)

    docs = iter_documents(corpus, seed=ctx.seed(spec.seed), store=store)
    batches = (
        ids
        for ids, _ in context_batches(
            docs, lm.tokenizer, context_len=context_len, max_tokens=spec.max_tokens, batch_size=spec.batch_size
        )
    )

    t0 = time.monotonic()
    share = 0.5 if spec.checks is not None else 1.0  # of the progress bar; the checks take the rest
    result = evaluate_sae(
        sae,
        lm,
        hook,
        batches,
        sinks=sinks,
        dense_threshold=spec.dense_threshold,
        should_stop=job.should_stop,
        on_batch=lambda n: job.report(
            share * n / spec.max_tokens,
            "evaluate",
            f"{n:,} tokens",
            tokens=n,
            tokens_per_s=n / max(time.monotonic() - t0, 1e-9),
        ),
    )
    job.check()
    checks = None
    if spec.checks is not None:
        from saeq_worker.checks import evaluate_checks  # imports the evaluate adapter itself

        checks = evaluate_checks(job, ctx, lm, sinks, cache_dir=cache_dir, llm_endpoints=llm_endpoints)
        job.check()

    provenance = {
        "metrics_version": METRICS_VERSION,
        "saeq_version": saeq.__version__,
        "saeq_git_commit": _git_commit(),
        "model": lm.provenance,
        "hook": hook,
        "sae": provenance_sae,
        "corpus": corpus.model_dump(mode="json"),
        "sink_rule": None if sinks is None else {"median_norm": sinks.median_norm, "norm_factor": sinks.norm_factor},
    }
    pngs = report.plots(result, sae_name)
    if checks is not None:
        pngs.update(checks.pngs)
    for name, data in pngs.items():
        store.put(keys.report_file(job.id, name), data, content_type="image/png")
    metrics_doc = {
        **provenance,
        "metrics": result.metrics,
        "counts": result.counts,
        "l0_histogram": result.l0_histogram,
        "l0_max": result.l0_max,
        "log_density_histogram": result.log_density_histogram,
        "fvu_by_position": result.fvu_by_position,
        "feature_density": result.feature_density.tolist(),
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
        "checks": None if checks is None else checks_summary(checks.doc),
        "report_key": keys.report_file(job.id, "report.md"),
        "metrics_key": keys.report_file(job.id, "metrics.json"),
        "plots": [keys.report_file(job.id, n) for n in pngs],
    }
    key = keys.manifest(job.id)
    store.put(key, json.dumps(manifest, indent=1).encode(), content_type="application/json")
    m = result.metrics
    job.report(
        1.0,
        "done",
        f"FVU {m['fvu']:.4f}, L0 {m['l0']:.1f}, CE recovered {m['ce_loss_recovered']:.4f}",
        force=True,
        fvu=m["fvu"],
        l0=m["l0"],
        ce_loss_recovered=m["ce_loss_recovered"],
    )
    return key


def held_out_corpus(harvest_corpus: dict):
    """The documents after those the harvest used, in the same corpus and order."""
    from pydantic import TypeAdapter

    from saeq.specs import CorpusSpec

    used = harvest_corpus.get("n_docs_used", 0)
    spec = {k: v for k, v in harvest_corpus.items() if k != "n_docs_used"}
    # +1: the harvest's last document may have been cut by its token budget, not read whole.
    spec.update(first_doc=spec.get("first_doc", 0) + used + 1, max_docs=None)
    return TypeAdapter(CorpusSpec).validate_python(spec)
