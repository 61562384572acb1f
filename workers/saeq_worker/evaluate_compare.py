"""An evaluate job's `compare_with`: the second SAE (B) evaluated on the evaluated one's (A's)
contexts, then the two compared (saeq.jobs.compare). The worker's I/O around the pure functions."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import Tensor

from saeq.errors import InvalidSpec
from saeq.jobs.compare import compare_metrics, match_features
from saeq.jobs.evaluate import EvalResult, evaluate_sae
from saeq.ml.models import LoadedModel
from saeq.ml.sinks import SinkReference
from saeq.specs import EvaluateSpec
from saeq.specs.compare import Comparison
from saeq_worker.resolve import SaeContext, load_trained_sae
from saeq_worker.running import RunningJob

FIELD = "spec.compare_with.sae"


def compare_with(
    job: RunningJob,
    ctx: SaeContext,
    lm: LoadedModel,
    sinks: SinkReference | None,
    contexts: Callable[[], Iterable[Tensor]],
    result_a: EvalResult,
    *,
    on_batch: Callable[[int], None],
    matching_at: float,
) -> Comparison:
    """B evaluated on a fresh pass over `contexts()` (the same contexts as A's, in the same order),
    then a third pass for the matched features' activation correlations (progress `matching_at`)."""
    spec: EvaluateSpec = job.spec
    assert spec.compare_with is not None
    option = spec.compare_with
    sae_b, name_b, train_b = load_trained_sae(job.store, option.sae.job_id, option.sae.name, field=FIELD)
    if train_b.harvest.hook != ctx.hook:
        raise InvalidSpec(f"B was trained at {train_b.harvest.hook}, A is evaluated at {ctx.hook}", field=FIELD)
    model_b = train_b.harvest.model.get("name")
    if model_b != ctx.model.name:
        raise InvalidSpec(f"B was trained on {model_b}'s activations, A is evaluated on {ctx.model.name}", field=FIELD)
    result_b = evaluate_sae(
        sae_b,
        lm,
        ctx.hook,
        contexts(),
        sinks=sinks,
        dense_threshold=spec.dense_threshold,
        should_stop=job.should_stop,
        on_batch=on_batch,
    )
    job.check()
    job.report(matching_at, "compare", "matching features", force=True)
    features = match_features(
        ctx.sae,
        sae_b,
        lm,
        ctx.hook,
        contexts(),
        sinks=sinks,
        min_cosine=option.min_cosine,
        min_correlation=option.min_correlation,
        should_stop=job.should_stop,
    )
    provenance_b = {
        "source": "job",
        "job_id": option.sae.job_id,
        "name": name_b,
        "architecture": sae_b.architecture,
        "d_sae": sae_b.d_sae,
    }
    return Comparison(
        a=ctx.provenance,
        b=provenance_b,
        metrics=compare_metrics(result_a, result_b, {str(k): v for k, v in option.noise_floor.items()}),
        features=features,
    )
