"""The I/O around `saeq.jobs.steer`: batch steer jobs (completions.jsonl, manifest last) and live
requests (`POST /v1/steer`, `/v1/chat/completions`) answered by a worker that keeps the model and
the SAE loaded between requests. A coder is steered where it reads and writes (saeq.jobs.steer.SteerSites:
a transcoder's input and output hooks, a crosscoder's layers)."""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict
from functools import lru_cache

from saeq import keys
from saeq.errors import InvalidSpec, JobError
from saeq.jobs.steer import (
    FeatureEdit,
    FeatureTrigger,
    SteerSites,
    chat_prompt,
    check_edits,
    generate,
    side_effects,
    steer_sites,
)
from saeq.ml.explainers import LocalLLM
from saeq.ml.steer_score import RUBRICS, RatedText, rate_completions, steering_score
from saeq.platform.store import ObjectStore
from saeq.specs import LabelSearch, ModelSpec, SteerRequest, SteerSpec
from saeq.specs.manifests import LabelManifest, SteerManifest
from saeq_worker.resolve import SaeContext, cached_model, read_published_manifest, sae_context
from saeq_worker.running import RunningJob
from saeq_worker.steer_calibration import run_calibration

MANIFEST_FORMAT = "saeq.steer/1"


def _edits(interventions, strength: float = 1.0) -> list[FeatureEdit]:
    """The spec's edits, values times `strength` (a trigger's threshold is not scaled)."""
    return [
        FeatureEdit(
            i.feature,
            i.mode,
            i.value * strength,
            i.positions,
            FeatureTrigger(i.trigger.feature, i.trigger.threshold) if i.trigger else None,
        )
        for i in interventions
    ]


def _prompt_ids(lm, prompt: str, chat: bool) -> list[int]:
    if chat:
        return chat_prompt(lm, [{"role": "user", "content": prompt}])
    return lm.tokenizer(prompt, add_special_tokens=False)["input_ids"]


def run_steer(job: RunningJob, *, cache_dir: str) -> str:
    spec: SteerSpec = job.spec
    store = job.store
    job.report(0.0, "loading", "SAE and model", force=True)
    ctx = sae_context(spec, store)
    sites = _sites(ctx, "spec.sae")
    for i, s in enumerate(spec.interventions):
        check_edits(_edits(s.edits), ctx.sae, field=f"spec.interventions[{i}].edits", sites=sites)
    lm = cached_model(ctx.model, job.device, cache_dir)
    records = _label_records(store, spec.label_job) if spec.label_job else {}
    labels = {f: r["label"] for f, r in records.items()}
    embedder = _embedder(str(lm.device)) if labels else None
    rows, total, done = [], len(spec.prompts) * len(spec.interventions) * len(spec.strengths), 0
    for p_i, prompt in enumerate(spec.prompts):
        ids = _prompt_ids(lm, prompt, spec.chat)
        # job.check between generated tokens: a cancel or a time limit acts within one token.
        default = generate(
            lm, ids, max_new_tokens=spec.max_new_tokens, temperature=spec.temperature, seed=spec.seed, check=job.check
        )
        for s_i, steer_set in enumerate(spec.interventions):
            concept = "; ".join(labels[e.feature] for e in steer_set.edits if e.feature in labels)
            for strength in spec.strengths:
                job.check()
                edits = _edits(steer_set.edits, strength)
                steered = generate(
                    lm,
                    ids,
                    max_new_tokens=spec.max_new_tokens,
                    hook=ctx.hook,
                    sae=ctx.sae,
                    edits=edits,
                    temperature=spec.temperature,
                    seed=spec.seed,
                    check=job.check,
                    sites=sites,
                )
                fx = side_effects(lm, ids, steered, hook=ctx.hook, sae=ctx.sae, edits=edits, sites=sites)
                row = {
                    "prompt_index": p_i,
                    "prompt": prompt,
                    "set": steer_set.name or f"set{s_i}",
                    "edits": [e.model_dump() for e in steer_set.edits],
                    "strength": strength,
                    "default": default.text,
                    "steered": steered.text,
                    "triggered_tokens": steered.triggered_tokens,
                    "kl_from_default": fx.kl_from_default,
                    "perplexity_unsteered": fx.perplexity_unsteered,
                    "concept": concept or None,
                }
                if embedder is not None and concept:
                    sim = embedder.similarity(concept, [default.text, steered.text])
                    row.update(concept_similarity_default=sim[0], concept_similarity_steered=sim[1])
                rows.append(row)
                done += 1
                job.report(done / total, "steer", f"{done}/{total} completions", completions=done)
    if spec.judge is not None:  # before the write: the report is written once
        job.report(0.99, "judge", f"rating {len(rows)} completions", force=True)
        _rate_rows(rows, LocalLLM(cached_model(spec.judge.model, job.device, cache_dir)))
    calibration_key, calibration = None, None
    if spec.calibrate is not None:
        assert embedder is not None  # calibrate needs label_job (SteerSpec), and its labels are read
        judge_lm = cached_model(spec.judge.model, job.device, cache_dir) if spec.judge else None
        calibration_key, calibration = run_calibration(
            job,
            ctx,
            lm,
            records,
            similarity=embedder.similarity,
            prompt_ids=lambda p: _prompt_ids(lm, p, spec.chat),
            judge_lm=judge_lm,
            sites=sites,
        )
    key = keys.report_file(job.id, "completions.jsonl")
    store.put(key, "".join(json.dumps(r) + "\n" for r in rows).encode(), content_type="application/x-ndjson")
    manifest = {
        "format": MANIFEST_FORMAT,
        "kind": "steer",
        "job_id": job.id,
        "created_at": time.time(),
        "spec": spec.model_dump(mode="json"),
        "sae": _with_sites(ctx.provenance, sites),
        "model": lm.provenance,
        "hook": ctx.hook,
        "completions_key": key,
        "n_completions": len(rows),
        "summary": _summary(rows),
        "calibration_key": calibration_key,
        "calibration": calibration,
    }
    mkey = job.publish(SteerManifest.model_validate(manifest))
    job.report(1.0, "done", f"{len(rows)} steered completions", force=True)
    return mkey


def _sites(ctx: SaeContext, field: str) -> SteerSites:
    return steer_sites(ctx.sae, ctx.hook, target_hook=ctx.target_hook, layer_hooks=ctx.layer_hooks, field=field)


def _with_sites(provenance: dict, sites: SteerSites) -> dict:
    """The SAE's provenance and the hooks its features are read at and its decoder writes."""
    return {**provenance, "reads": list(sites.read), "writes": list(sites.write)}


def _summary(rows: list[dict]) -> list[dict]:
    """Mean side effects per (set, strength)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["set"], r["strength"]), []).append(r)
    out = []
    for (name, strength), rs in groups.items():
        item = {
            "set": name,
            "strength": strength,
            "n": len(rs),
            "kl_from_default": sum(r["kl_from_default"] for r in rs) / len(rs),
            "perplexity_unsteered": sum(r["perplexity_unsteered"] for r in rs) / len(rs),
        }
        if "concept_similarity_steered" in rs[0]:
            for k in ("concept_similarity_default", "concept_similarity_steered"):
                item[k] = sum(r[k] for r in rs) / len(rs)
            # How often the concept shows up more than without steering; an unchanged text never
            # counts (the same text embedded twice can differ in the last float bits).
            item["concept_rate"] = sum(
                r["steered"] != r["default"] and r["concept_similarity_steered"] > r["concept_similarity_default"]
                for r in rs
            ) / len(rs)
        if "judge_score_steered" in rs[0]:
            for side in ("default", "steered"):
                est = steering_score([r[f"judge_score_{side}"] for r in rs])
                item[f"steering_score_{side}"] = est.model_dump(mode="json")
                for aspect in RUBRICS:
                    item[f"judge_{aspect}_{side}"] = sum(r[f"judge_{aspect}_{side}"] for r in rs) / len(rs)
        out.append(item)
    return out


def _rate_rows(rows: list[dict], judge: LocalLLM) -> None:
    """AxBench's three ratings and their harmonic mean, for the default and the steered completion
    of every row that names a concept (a row whose features have no label is left unrated)."""
    rated = [r for r in rows if r["concept"]]
    for side in ("default", "steered"):
        ratings = rate_completions(judge, [RatedText(r["concept"], r["prompt"], r[side]) for r in rated])
        for r, rating in zip(rated, ratings, strict=True):
            r.update({f"judge_{k}_{side}": v for k, v in asdict(rating).items()})


def _label_records(store: ObjectStore, label_job: str) -> dict[int, dict]:
    """feature -> its label record, preferring the label with the best detection AUC among explainers."""
    manifest = read_published_manifest(store, label_job, LabelManifest, field="spec", id_field="spec.label_job")
    best: dict[int, tuple[float, dict]] = {}
    for line in store.get(manifest.labels_key).decode().splitlines():
        r = json.loads(line)
        auc = (r["scores"].get("detection") or r["scores"].get("embedding") or {}).get("auc") or 0.0
        if r["feature"] not in best or auc > best[r["feature"]][0]:
            best[r["feature"]] = (auc, r)
    return {f: r for f, (_, r) in best.items()}


# --- live --------------------------------------------------------------------------------------

_LIVE: dict[str, SaeContext] = {}  # the SAEs of recent live requests, kept loaded
_LIVE_MAX = 4


def _live_context(ref: SteerRequest, store: ObjectStore) -> SaeContext:
    key = ref.model_dump_json()
    if key not in _LIVE:
        if len(_LIVE) >= _LIVE_MAX:
            _LIVE.pop(next(iter(_LIVE)))
        _LIVE[key] = sae_context(ref, store)
    return _LIVE[key]


def serve_steer(
    request: SteerRequest,
    store: ObjectStore,
    *,
    device: str,
    cache_dir: str,
    max_prompt_tokens: int | None = None,
    check: Callable[[], None] | None = None,
) -> dict:
    """One live request: the steered completion and, when asked, the default one beside it.
    `max_prompt_tokens`: the team's cap, counted after the chat template; `check` runs between
    generated tokens and before each load phase, and raises to stop (the caller gave up): a load
    cannot be stopped halfway, so a request given up during one goes no further."""
    t0 = time.monotonic()
    check = check or (lambda: None)
    ctx, sites = None, None
    if request.sae is not None:
        check()
        # Keyed by what picks the SAE, model and hook only, so other fields do not reload it.
        ctx = _live_context(SteerRequest(sae=request.sae, model=request.model, hook=request.hook, prompt="-"), store)
        sites = _sites(ctx, "sae")
        check_edits(_edits(request.interventions), ctx.sae, field="interventions", sites=sites)
    model = ctx.model if ctx else (request.model or ModelSpec())
    check()
    lm = cached_model(model, device, cache_dir)
    check()
    if request.messages is not None:
        ids = chat_prompt(lm, [m.model_dump() for m in request.messages])
    else:
        assert request.prompt is not None  # SteerRequest holds exactly one of prompt and messages
        ids = _prompt_ids(lm, request.prompt, request.chat)
    if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
        field = "prompt" if request.messages is None else "messages"
        raise InvalidSpec(
            f"the {field} is {len(ids)} tokens as the model reads it (chat template included); "
            f"this team's live requests may have at most {max_prompt_tokens} (quota "
            f"live_prompt_tokens)",
            field=field,
        )
    edits = _edits(request.interventions)
    steered = generate(
        lm,
        ids,
        max_new_tokens=request.max_new_tokens,
        hook=ctx.hook if ctx else None,
        sae=ctx.sae if ctx else None,
        edits=edits,
        temperature=request.temperature,
        seed=request.seed,
        check=check,
        sites=sites,
    )
    out = {
        "steered": steered.text,
        "steered_token_ids": steered.token_ids,
        "triggered_tokens": steered.triggered_tokens,
        "prompt_tokens": len(ids),
        "sae": _with_sites(ctx.provenance, sites) if ctx and sites else None,
        "hook": ctx.hook if ctx else None,
        "model": model.name,
    }
    if request.include_default and edits:
        default = generate(
            lm,
            ids,
            max_new_tokens=request.max_new_tokens,
            temperature=request.temperature,
            seed=request.seed,
            check=check,
        )
        assert ctx is not None  # edits are of an SAE's features: a request with edits names an SAE
        fx = side_effects(lm, ids, steered, hook=ctx.hook, sae=ctx.sae, edits=edits, sites=sites)
        out.update(
            default=default.text, kl_from_default=fx.kl_from_default, perplexity_unsteered=fx.perplexity_unsteered
        )
    elif request.include_default:
        out.update(default=steered.text, kl_from_default=0.0, perplexity_unsteered=None)
    out["seconds"] = time.monotonic() - t0
    return _finite(out)


def _finite(out: dict) -> dict:
    """NaN and infinity become null with a note saying why: JSON has no such numbers. Edits that
    overflow the model's dtype (float16 tops out at 65,504) give NaN logits, an empty completion
    a NaN perplexity."""
    bad = [k for k, v in out.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        out.update(
            {k: None for k in bad},
            notes=[
                f"{k} is not a finite number (the steered activations overflowed the model's dtype, or "
                f"nothing was generated): null"
                for k in bad
            ],
        )
    return out


_EMBEDDED: OrderedDict[str, tuple] = OrderedDict()  # label job -> (records, embeddings, manifest, n labels)
EMBEDDED_JOBS = 4
"""Label jobs whose label embeddings a worker process keeps (least recently searched dropped)."""
MAX_SEARCH_LABELS = 50_000
"""Labels of one label job that label search embeds (the first ones; the reply says how many of
how many). MiniLM's 384 float32s are 1.5 KB a label: 75 MB at the cap, 4x that for EMBEDDED_JOBS.
A label job of a 32,768-feature SAE with one explainer fits whole."""
EMBED_BATCH = 256
"""Labels embedded between two cancel checks."""


def search_labels(
    search: LabelSearch, store: ObjectStore, *, device: str, check: Callable[[], None] | None = None
) -> dict:
    """Features of a label job ranked by cosine similarity of their label and description to the
    query (MiniLM); each feature once, with its best-matching label. `check` runs before each
    load and between batches of labels embedded, and raises to stop (the caller gave up)."""
    check = check or (lambda: None)
    check()
    embedder = _embedder(device)
    if search.label_job not in _EMBEDDED:
        _EMBEDDED[search.label_job] = _embed_labels(store, search.label_job, embedder, check)
        while len(_EMBEDDED) > EMBEDDED_JOBS:
            _EMBEDDED.popitem(last=False)
    _EMBEDDED.move_to_end(search.label_job)
    records, emb, manifest, n_labels = _EMBEDDED[search.label_job]
    q = embedder.model.encode(
        [search.query], convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
    )[0]
    sims = (emb @ q).tolist()
    best: dict[int, tuple[float, dict]] = {}
    for r, sim in zip(records, sims, strict=False):
        if r["feature"] not in best or sim > best[r["feature"]][0]:
            best[r["feature"]] = (sim, r)
    ranked = sorted(best.values(), key=lambda t: -t[0])[: search.top]
    return {
        "label_job": search.label_job,
        "query": search.query,
        "sae": manifest.sae,
        "hook": manifest.hook,
        "results": [
            {
                "feature": r["feature"],
                "similarity": sim,
                "label": r["label"],
                "description": r["description"],
                "explainer": r["explainer"],
                "detection_auc": (r["scores"].get("detection") or {}).get("auc"),
            }
            for sim, r in ranked
        ],
        "labels_searched": len(records),
        "labels_total": n_labels,
    }


def _embed_labels(store: ObjectStore, label_job: str, embedder, check: Callable[[], None]) -> tuple:
    import torch

    manifest = read_published_manifest(store, label_job, LabelManifest, field="label_job")
    check()
    lines = store.get(manifest.labels_key).decode().splitlines()
    records = [json.loads(line) for line in lines[:MAX_SEARCH_LABELS]]
    texts = [f"{r['label']}: {r['description']}" for r in records]
    parts = []
    for i in range(0, len(texts), EMBED_BATCH):
        check()
        parts.append(
            embedder.model.encode(
                texts[i : i + EMBED_BATCH], convert_to_tensor=True, normalize_embeddings=True, show_progress_bar=False
            )
        )
    model = embedder.model
    emb = torch.cat(parts) if parts else torch.zeros(0, model.get_sentence_embedding_dimension(), device=model.device)
    return records, emb, manifest, len(lines)


@lru_cache(maxsize=1)
def _embedder(device: str):
    """MiniLM, loaded once per worker process (label search and steer jobs use it)."""
    from saeq.ml.scoring import EmbeddingScorer

    return EmbeddingScorer(device=device)


def error_reply(e: Exception) -> dict:
    if isinstance(e, JobError):
        return {"error": {"code": e.code, "field": e.field, "message": e.message}}
    return {"error": {"code": "internal", "field": None, "message": f"{type(e).__name__}: {e}"}}
