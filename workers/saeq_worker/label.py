"""The I/O around `saeq.jobs.label`: the SAE and its held-out text, the feature index (stored, and
reused when the job is retried), the explainers and judge the spec names, each finished chunk of
features (kept for a later attempt: saeq_worker.partials), labels.jsonl, and the manifest last.
A transcoder's features are read at its input hook, a crosscoder's at all its hooks in one pass; the
manifest's `sae` and every feature page say which hooks the coder reads and writes."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

from saeq import keys
from saeq.errors import InvalidSpec
from saeq.jobs.harvest import context_batches
from saeq.jobs.label import CHUNK_FEATURES, LabelChunk, label_features, select_features
from saeq.jobs.label_bins import density_bin_scores
from saeq.jobs.label_controls import run_controls
from saeq.jobs.label_summary import summarize_labels
from saeq.ml.corpus import document_info, iter_documents
from saeq.ml.explainers import (
    PROMPT_VERSION,
    Decode,
    EndpointExplainer,
    EndpointJudge,
    LocalExplainer,
    LocalJudge,
    LocalLLM,
    MetadataExplainer,
    token_pieces,
)
from saeq.ml.features import FeatureIndex, build_feature_index, coder_input_hooks
from saeq.ml.models import LoadedModel
from saeq.ml.scoring import EmbeddingScorer
from saeq.platform.settings import LlmEndpoint
from saeq.specs import LabelSpec
from saeq.specs import LocalLLM as LocalLLMSpec
from saeq.specs.manifests import LabelManifest
from saeq_worker.feature_pages import write_feature_pages
from saeq_worker.label_carry import carry, carry_source
from saeq_worker.partials import drop_partials, put_json, read_json
from saeq_worker.resolve import (
    SaeContext,
    cached_model,
    chat_endpoint,
    sae_context,
    sink_reference,
)
from saeq_worker.running import RunningJob

MANIFEST_FORMAT = "saeq.label/1"


def run_label(job: RunningJob, *, cache_dir: str, llm_endpoints: Mapping[str, LlmEndpoint]) -> str:
    spec: LabelSpec = job.spec
    store = job.store
    job.report(0.0, "loading", "SAE and model", force=True)
    ctx = sae_context(spec, store)
    lm = cached_model(ctx.model, job.device, cache_dir)
    sinks = sink_reference(spec, ctx.sink_info)
    sites = coder_sites(ctx)
    other = None if spec.carry_from is None else carry_source(store, spec.carry_from, ctx.sae)
    job.check()

    index_key = keys.feature_index(job.id)
    if store.exists(index_key):  # a retried job: the index of the earlier attempt is complete
        index = FeatureIndex.from_bytes(store.get(index_key))
    else:
        index = _build_index(job, spec, ctx, lm, sinks, sites["reads"])
        meta = {
            "hook": ctx.hook,
            "reads": json.dumps(sites["reads"]),
            "sae": json.dumps(ctx.provenance),
            "context_len": str(ctx.context_len),
        }
        store.put(index_key, index.to_bytes(meta), content_type="application/octet-stream")
    features = select_features(index, spec)
    if not features:
        raise InvalidSpec(
            f"no feature fires in {spec.min_activating} or more of the "
            f"{index.token_ids_CT.shape[0]} indexed contexts; index more tokens",
            field="spec.index_tokens",
        )
    job.check()

    decode = token_pieces(lm.tokenizer)
    explainers, judge, embedder = _labellers(job, spec, ctx, lm, decode, cache_dir, llm_endpoints)

    finished = _finished_chunks(job, features)
    t0 = time.monotonic()
    records = label_features(
        index,
        features,
        spec,
        explainers=explainers,
        judge=judge,
        embedder=embedder,
        decode=decode,
        finished=finished,
        on_chunk=lambda chunk: _keep_chunk(job, chunk),
        should_stop=job.should_stop,
        on_progress=lambda done, total: job.report(
            0.5 + 0.45 * done / total,
            "label",
            f"{done}/{total} features",
            features_done=done,
            features_per_min=60 * done / max(time.monotonic() - t0, 1e-9),
        ),
    )
    job.check()
    job.report(0.95, "controls", "control trials of the judges")
    controls = run_controls(index, features, records, spec, judge=judge, embedder=embedder, decode=decode)
    job.check()

    carried, page_extra = None, None
    if spec.carry_from is not None and other is not None:
        job.report(0.95, "carry", f"matching features to label job {spec.carry_from.label_job}")
        records, carried, page_extra = carry(spec.carry_from, ctx.sae, index, records, other)
    labels_key = keys.labels_file(job.id)
    store.put(labels_key, "".join(json.dumps(r) + "\n" for r in records).encode(), content_type="application/x-ndjson")
    pages = None
    if spec.browser:
        job.report(0.95, "pages", "feature browser pages")
        pages = write_feature_pages(job, spec, index, records, ctx.sae, lm, decode, sites=sites, extra=page_extra)
    summary = summarize_labels(records, controls)
    manifest = {
        "format": MANIFEST_FORMAT,
        "kind": "label",
        "job_id": job.id,
        "created_at": time.time(),
        "spec": spec.model_dump(mode="json"),
        "sae": {**ctx.provenance, **sites},
        "model": lm.provenance,
        "hook": ctx.hook,
        "corpus": _jsonable(ctx.corpus),
        "prompt_version": PROMPT_VERSION,
        "sink_rule": None if sinks is None else {"median_norm": sinks.median_norm, "norm_factor": sinks.norm_factor},
        "index": {
            "key": index_key,
            "n_contexts": index.token_ids_CT.shape[0],
            "context_len": index.token_ids_CT.shape[1],
            "n_ordinary_tokens": index.n_ordinary,
            "n_sinks": int(index.sinks_CT.sum()),
            "nnz": index.values.numel(),
        },
        "labels_key": labels_key,
        "n_features": len(features),
        "summary": summary,
        "judge_controls": [c.model_dump(mode="json") for c in controls],
        "density_bins": [b.model_dump(mode="json") for b in density_bin_scores(index, records, spec, controls)],
        "browser": pages,
        "labelling_s": time.monotonic() - t0,
        "carry": carried,
    }
    key = job.publish(LabelManifest.model_validate(manifest))
    drop_partials(job)
    job.report(1.0, "done", f"{len(features)} features labelled by {len(explainers)} explainer(s)", force=True)
    return key


def _chunk_name(index: int) -> str:
    return f"label-chunk-{index:05d}.json"


def _keep_chunk(job: RunningJob, chunk: LabelChunk) -> None:
    """Store a finished chunk; then, a safe point: a job asked to yield stops here (Preempted)."""
    put_json(
        job, _chunk_name(chunk.index), {"index": chunk.index, "features": chunk.features, "records": chunk.records}
    )
    job.check(chunks_done=chunk.index + 1)


def _finished_chunks(job: RunningJob, features: list[int]) -> dict[int, LabelChunk]:
    """The chunks earlier attempts stored whole, for these features; a `resumed` event says how many."""
    kept: dict[int, LabelChunk] = {}
    for name, body in read_json(job, "label-chunk-").items():
        index, chunk_features, records = body.get("index"), body.get("features"), body.get("records")
        if not isinstance(index, int) or name != _chunk_name(index) or not isinstance(records, list):
            continue
        wanted = features[index * CHUNK_FEATURES :][:CHUNK_FEATURES]
        if chunk_features != wanted:
            continue  # chosen from another index: redone
        if not all(isinstance(r, dict) and r.get("feature") in wanted for r in records):
            continue
        kept[index] = LabelChunk(index, wanted, records)
    if kept:
        n_chunks = -(-len(features) // CHUNK_FEATURES)
        job.event(
            "resumed",
            f"{len(kept)} of {n_chunks} chunks of features labelled by earlier attempts, kept",
            chunks_kept=len(kept),
            chunks=n_chunks,
            features_kept=sum(len(c.features) for c in kept.values()),
        )
    return kept


def _labellers(
    job: RunningJob,
    spec: LabelSpec,
    ctx: SaeContext,
    lm: LoadedModel,
    decode: Decode,
    cache_dir: str,
    llm_endpoints: Mapping[str, LlmEndpoint],
) -> tuple[list, LocalJudge | EndpointJudge | None, EmbeddingScorer | None]:
    """The explainers, judge and embedding scorer the spec names (local models loaded once each)."""
    store = job.store
    models = {ctx.model: lm}  # pyright: ignore[reportUnhashable]  frozen pydantic models hash at runtime

    def local_llm(s: LocalLLMSpec) -> LocalLLM:
        if s.model not in models:
            models[s.model] = cached_model(s.model, job.device, cache_dir)
        return LocalLLM(models[s.model])

    explainers = []
    for i, e in enumerate(spec.explainers):
        if e.backend == "metadata":
            explainers.append(MetadataExplainer(lambda ids: document_info(ctx.read_corpus(), ids, store=store), decode))
        elif e.backend == "local":
            explainers.append(LocalExplainer(local_llm(e), decode, e.max_new_tokens, f"local:{e.model.name}"))
        else:
            explainers.append(
                EndpointExplainer(
                    chat_endpoint(e, store, f"spec.explainers.{i}", llm_endpoints),
                    decode,
                    e.max_new_tokens,
                    f"openai:{e.model}",
                )
            )
    judge = None
    if spec.judge is not None and spec.judge.backend == "local":
        judge = LocalJudge(local_llm(spec.judge), f"local:{spec.judge.model.name}")
    elif spec.judge is not None:
        judge = EndpointJudge(
            chat_endpoint(spec.judge, store, "spec.judge", llm_endpoints), f"openai:{spec.judge.model}"
        )
    embedder = EmbeddingScorer(device=str(lm.device)) if "embedding" in spec.scorers else None
    return explainers, judge, embedder


def coder_sites(ctx: SaeContext) -> dict[str, list[str]]:
    """The hooks the coder reads (what its features encode) and writes (its decoder's output):
    an SAE's one hook both; a transcoder's input and output hooks; a crosscoder's layers both."""
    reads = list(coder_input_hooks(ctx.sae, ctx.hook, ctx.layer_hooks))
    if ctx.layer_hooks and len(reads) > 1:
        return {"reads": reads, "writes": reads}
    if ctx.sae.is_transcoder:  # an imported transcoder names no output hook: unknown
        return {"reads": reads, "writes": [ctx.target_hook] if ctx.target_hook else []}
    return {"reads": reads, "writes": reads}


def _build_index(job: RunningJob, spec: LabelSpec, ctx, lm, sinks, reads: list[str]) -> FeatureIndex:
    docs = iter_documents(ctx.read_corpus(), seed=ctx.seed(spec.seed), store=job.store)
    batches = context_batches(
        docs, lm.tokenizer, context_len=ctx.context_len, max_tokens=spec.index_tokens, batch_size=spec.batch_size
    )
    t0 = time.monotonic()
    return build_feature_index(
        ctx.sae,
        lm,
        reads,
        batches,
        sinks=sinks,
        should_stop=job.should_stop,
        on_batch=lambda n: job.report(
            0.5 * n / spec.index_tokens,
            "index",
            f"{n:,} tokens",
            tokens=n,
            tokens_per_s=n / max(time.monotonic() - t0, 1e-9),
        ),
    )


def _jsonable(corpus) -> dict:
    return corpus.model_dump(mode="json") if hasattr(corpus, "model_dump") else dict(corpus)
