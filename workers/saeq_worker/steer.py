"""The I/O around `saeq.jobs.steer` for a batch steer job: completions.jsonl, the calibration
report when asked, manifest last. A coder is steered where it reads and writes
(saeq.jobs.steer.SteerSites: a transcoder's input and output hooks, a crosscoder's layers). Live
requests: saeq_worker.steer_live; the labels both read: saeq_worker.steer_labels."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict

from saeq import keys
from saeq.jobs.steer import check_edits, generate, side_effects
from saeq.ml.explainers import LocalLLM
from saeq.ml.steer_score import RUBRICS, EndpointRater, OptionRater, RatedText, rate_completions, steering_score
from saeq.platform.settings import LlmEndpoint
from saeq.specs import SteerSpec
from saeq.specs.manifests import SteerManifest
from saeq_worker.resolve import cached_model, chat_endpoint, sae_context
from saeq_worker.running import RunningJob
from saeq_worker.steer_calibration import run_calibration
from saeq_worker.steer_labels import _embedder, _label_records
from saeq_worker.steer_requests import _edits, _prompt_ids, _sites, _with_sites

MANIFEST_FORMAT = "saeq.steer/1"


def run_steer(job: RunningJob, *, cache_dir: str, llm_endpoints: Mapping[str, LlmEndpoint]) -> str:
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
                    "intervals": {k: e.model_dump(mode="json") for k, e in fx.intervals.items()},
                    "concept": concept or None,
                }
                if embedder is not None and concept:
                    sim = embedder.similarity(concept, [default.text, steered.text])
                    row.update(concept_similarity_default=sim[0], concept_similarity_steered=sim[1])
                rows.append(row)
                done += 1
                job.report(done / total, "steer", f"{done}/{total} completions", completions=done)
    judge = _rater(job, cache_dir, llm_endpoints)
    if judge is not None:  # before the write: the report is written once
        job.report(0.99, "judge", f"rating {len(rows)} completions", force=True)
        _rate_rows(rows, judge)
    calibration_key, calibration = None, None
    if spec.calibrate is not None:
        assert embedder is not None  # calibrate needs label_job (SteerSpec), and its labels are read
        calibration_key, calibration = run_calibration(
            job,
            ctx,
            lm,
            records,
            similarity=embedder.similarity,
            prompt_ids=lambda p: _prompt_ids(lm, p, spec.chat),
            judge=judge,
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


def _rater(job: RunningJob, cache_dir: str, llm_endpoints: Mapping[str, LlmEndpoint]) -> OptionRater | None:
    """The spec's judge: a local model on this worker's device, or the deployment's endpoint."""
    judge = job.spec.judge
    if judge is None:
        return None
    if judge.backend == "openai":
        return EndpointRater(chat_endpoint(judge, job.store, "spec.judge", llm_endpoints))
    return LocalLLM(cached_model(judge.model, job.device, cache_dir))


def _rate_rows(rows: list[dict], judge: OptionRater) -> None:
    """AxBench's three ratings and their harmonic mean, for the default and the steered completion
    of every row that names a concept (a row whose features have no label is left unrated)."""
    rated = [r for r in rows if r["concept"]]
    for side in ("default", "steered"):
        ratings = rate_completions(judge, [RatedText(r["concept"], r["prompt"], r[side]) for r in rated])
        for r, rating in zip(rated, ratings, strict=True):
            r.update({f"judge_{k}_{side}": v for k, v in asdict(rating).items()})
