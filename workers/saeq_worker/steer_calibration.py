"""A steer job's `calibrate` block: the label job's labels and max activations in, each feature's
calibrated strength out, written once as the job's report/calibration.json (named by the manifest)."""

from __future__ import annotations

import json
from collections.abc import Callable

from saeq import keys
from saeq.errors import InvalidSpec
from saeq.jobs.steer import SteerSites
from saeq.jobs.steer_calibrate import Judge, Prompt, Target, calibrate
from saeq.ml.models import LoadedModel
from saeq.ml.steer_score import OptionRater, RatedText, rate_completions
from saeq.specs import SteerSpec
from saeq_worker.resolve import SaeContext
from saeq_worker.running import RunningJob

FILENAME = "calibration.json"
FORMAT = "saeq.steer_calibration/1"


def run_calibration(
    job: RunningJob,
    ctx: SaeContext,
    lm: LoadedModel,
    records: dict[int, dict],
    *,
    similarity: Callable[[str, list[str]], list[float]],
    prompt_ids: Callable[[str], list[int]],
    judge: OptionRater | None,
    sites: SteerSites | None,
) -> tuple[str, list[dict]]:
    """Calibrate `spec.calibrate.features` (their best label records in `records`); returns the
    calibration's key and the manifest's one-line-a-feature summary."""
    spec: SteerSpec = job.spec
    assert spec.calibrate is not None and spec.label_job is not None  # SteerSpec's validator
    targets = []
    for i, f in enumerate(spec.calibrate.features):
        r = records.get(f)
        if r is None or not r.get("max_activation"):
            raise InvalidSpec(
                f"feature {f} has no label with a max activation in label job {spec.label_job}: label it first",
                field=f"spec.calibrate.features[{i}]",
            )
        if not 0 <= f < ctx.sae.d_sae:
            raise InvalidSpec(f"feature {f} is not in 0..{ctx.sae.d_sae - 1}", field=f"spec.calibrate.features[{i}]")
        targets.append(Target(f, r["label"], float(r["max_activation"])))
    prompts = [Prompt(p, prompt_ids(p)) for p in spec.prompts]
    results = calibrate(
        lm,
        ctx.sae,
        ctx.hook,
        targets,
        prompts,
        spec.calibrate,
        max_new_tokens=spec.max_new_tokens,
        similarity=similarity,
        judge=_judge(judge) if judge is not None else None,
        seed=spec.seed,
        temperature=spec.temperature,
        sites=sites,
        check=job.check,
        on_feature=lambda done, total: job.report(
            0.5 + 0.49 * done / total, "calibrate", f"{done}/{total} features calibrated", force=True
        ),
    )
    features = [r.to_dict() | {"label_job": spec.label_job} for r in results]
    key = keys.report_file(job.id, FILENAME)
    body = {"format": FORMAT, "job_id": job.id, "label_job": spec.label_job, "hook": ctx.hook, "features": features}
    job.store.put(key, json.dumps(body, indent=1).encode(), content_type="application/json")
    summary = [
        {
            "feature": r.feature,
            "label": r.concept,
            "label_job": spec.label_job,
            "mode": r.mode,
            "value": r.value,
            "multiple": r.multiple,
            "max_activation": r.max_activation,
            "met": r.met,
        }
        for r in results
    ]
    return key, summary


def _judge(rater: OptionRater) -> Judge:
    """AxBench's harmonic-mean score of each completion, by the spec's judge."""

    def judge(concept: str, prompt_texts: list[str], texts: list[str]) -> list[float]:
        items = [RatedText(concept, p, t) for p, t in zip(prompt_texts, texts, strict=True)]
        return [r.score for r in rate_completions(rater, items)]

    return judge
