"""The evaluate job's checks (part of the evaluate adapter): the I/O around `saeq.checks`: which
documents the SAE was trained on, the label job's labels and feature index, the rating judge the
spec names, and each finished check kept for a later attempt (saeq_worker.partials). A transcoder's
features are read from its input hook, a crosscoder's from all its hooks at once; a check that
reads the decoder as directions in the hook's space (absorption) is refused for both."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence

from saeq.checks.run import CHECK_NAMES, CheckPart, ChecksResult, LabelContext, run_checks
from saeq.checks.specificity import EmbeddingRater, EndpointRater, LocalRater
from saeq.errors import InvalidSpec
from saeq.ml.corpus import builtin_order
from saeq.ml.explainers import Explanation, LocalLLM, token_pieces
from saeq.ml.features import FeatureIndex
from saeq.ml.sae import SparseAutoencoder
from saeq.ml.scoring import EmbeddingScorer
from saeq.platform.settings import LlmEndpoint
from saeq.specs import Checks, EvaluateSpec
from saeq.specs.manifests import HarvestManifest, LabelManifest, TrainManifest
from saeq_worker.partials import put_json, read_json
from saeq_worker.resolve import SaeContext, cached_model, chat_endpoint, read_published_manifest
from saeq_worker.running import RunningJob


def evaluate_checks(
    job: RunningJob,
    checks: Checks,
    ctx: SaeContext,
    lm,
    sinks,
    *,
    cache_dir: str,
    llm_endpoints: Mapping[str, LlmEndpoint],
    layer_hooks: Sequence[str] | None = None,
) -> ChecksResult:
    """`checks` (the evaluate spec's) of the SAE in `ctx`; `layer_hooks`: a crosscoder's hooks."""
    spec: EvaluateSpec = job.spec
    refuse_inapplicable_checks(checks, ctx.sae, layer_hooks)
    labelled, all_labels = None, {}
    if checks.label_job is not None:
        records, manifest = _label_records(job.store, checks.label_job, ctx)
        explainer = checks.specificity.explainer if checks.specificity else None
        explainer = explainer or records[0]["explainer"]
        names = sorted({r["explainer"] for r in records})
        if explainer not in names:
            raise InvalidSpec(
                f"label job {checks.label_job} has no labels by {explainer!r}; it has {names}",
                field="spec.checks.specificity.explainer",
            )
        all_labels = {
            r["feature"]: Explanation(r["label"], r["description"]) for r in records if r["explainer"] == explainer
        }
        if checks.specificity is not None:
            chosen = dict(list(all_labels.items())[: checks.specificity.max_features])
            index = FeatureIndex.from_bytes(job.store.get(manifest.index.key))
            labelled = LabelContext(
                chosen,
                index,
                token_pieces(lm.tokenizer),
                _rater(checks.specificity.judge, job, lm, cache_dir, llm_endpoints),
                manifest.spec["window_before"],
                manifest.spec["window_after"],
            )
    result = run_checks(
        checks,
        ctx.sae,
        lm,
        ctx.hook,
        sinks=sinks,
        training_docs=_training_docs(job.store, ctx),
        seed=spec.seed,
        labelled=labelled,
        all_labels=all_labels,
        title=ctx.name,
        finished=_finished_checks(job),
        on_check=lambda name, part: _keep_check(job, name, part),
        should_stop=job.should_stop,
        on_progress=lambda stage, fraction: job.report(0.5 + 0.5 * fraction, "checks", stage),
        layer_hooks=layer_hooks,
    )
    result.doc["label_job"] = checks.label_job
    return result


CHECK_PREFIX = "evaluate-check-"
DECODER_SPACE_CHECKS = ("absorption",)
"""Checks that read the decoder's rows as directions in the space of the hook the features are read
from: a transcoder's decoder writes another hook (the MLP's output), a crosscoder's spans all its layers."""


def refuse_inapplicable_checks(checks: Checks, sae: SparseAutoencoder, layer_hooks: Sequence[str] | None) -> None:
    """InvalidSpec naming spec.checks.<name> for a check that cannot apply to this kind of coder."""
    kind = "transcoder" if sae.is_transcoder else "crosscoder" if layer_hooks else None
    if kind is None:
        return
    for name in DECODER_SPACE_CHECKS:
        if getattr(checks, name, None) is not None:
            raise InvalidSpec(
                f"{name} compares the decoder's directions with a probe of the hook the features are read "
                f"from; a {kind}'s decoder writes {'another hook' if kind == 'transcoder' else 'all its layers'} "
                f"(set checks.{name} to null)",
                field=f"spec.checks.{name}",
            )


def _keep_check(job: RunningJob, name: str, part: CheckPart) -> None:
    """Store a finished check; then, a safe point: a job asked to yield stops here (Preempted)."""
    pngs = {n: base64.b64encode(data).decode() for n, data in part.pngs.items()}
    put_json(job, f"{CHECK_PREFIX}{name}.json", {"name": name, "doc": part.doc, "pngs": pngs})
    job.check()


def _finished_checks(job: RunningJob) -> dict[str, CheckPart]:
    """The checks earlier attempts finished, this job's and spec's; a `resumed` event names them."""
    kept: dict[str, CheckPart] = {}
    for piece, body in read_json(job, CHECK_PREFIX).items():
        name, doc, pngs = body.get("name"), body.get("doc"), body.get("pngs")
        if name not in CHECK_NAMES or piece != f"{CHECK_PREFIX}{name}.json":
            continue
        if not isinstance(doc, dict) or not isinstance(pngs, dict):
            continue
        try:
            kept[name] = CheckPart(doc, {n: base64.b64decode(data, validate=True) for n, data in pngs.items()})
        except (TypeError, ValueError):
            continue  # a torn figure: the check is redone
    if kept:
        names = [n for n in CHECK_NAMES if n in kept]
        job.event("resumed", f"checks finished by earlier attempts, kept: {', '.join(names)}", checks_kept=len(kept))
    return kept


def _label_records(store, label_job: str, ctx: SaeContext) -> tuple[list[dict], LabelManifest]:
    manifest = read_published_manifest(
        store, label_job, LabelManifest, field="spec.checks", id_field="spec.checks.label_job"
    )
    theirs, ours = manifest.sae, ctx.provenance
    same = all(theirs.get(k) == ours.get(k) for k in ("source", "job_id", "name", "path"))
    if not same:
        raise InvalidSpec(
            f"label job {label_job} labelled another SAE ({theirs}), not this one ({ours})",
            field="spec.checks.label_job",
        )
    records = [json.loads(line) for line in store.get(manifest.labels_key).decode().splitlines() if line]
    if not records:
        raise InvalidSpec(f"label job {label_job} labelled no feature", field="spec.checks.label_job")
    return records, manifest


def _rater(judge, job: RunningJob, lm, cache_dir: str, llm_endpoints: Mapping[str, LlmEndpoint]):
    if judge.backend == "embedding":
        return EmbeddingRater(EmbeddingScorer(device=str(lm.device)))
    if judge.backend == "openai":
        return EndpointRater(
            chat_endpoint(judge, job.store, "spec.checks.specificity.judge", llm_endpoints), f"openai:{judge.model}"
        )
    return LocalRater(LocalLLM(cached_model(judge.model, job.device, cache_dir)), f"local:{judge.model.name}")


def _training_docs(store, ctx: SaeContext) -> set[int]:
    """Ids of the builtin English articles the SAE's harvest read (empty for other corpora)."""
    if ctx.provenance.get("source") != "job":
        return set()
    train = read_published_manifest(store, ctx.provenance["job_id"], TrainManifest, field="spec.sae")
    if train.harvest.job_id == train.job_id:  # online training: the corpus and seed it read are its own
        corpus, seed = train.harvest.corpus, train.spec["activations"]["seed"]
    else:
        harvest = read_published_manifest(store, train.harvest.job_id, HarvestManifest, field="spec.sae")
        corpus, seed = harvest.corpus, harvest.spec["seed"]
    if corpus.get("source") != "builtin" or corpus.get("name") != "wiki-en":
        return set()
    order = builtin_order("wiki-en", seed)
    first = corpus.get("first_doc", 0)
    return set(order[first : first + corpus["n_docs_used"] + 1])  # +1: the last may be cut short
