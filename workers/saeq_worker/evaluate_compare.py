"""An evaluate job's `compare_with`: the second SAE (B) evaluated on the evaluated one's (A's)
contexts, then the two compared (saeq.jobs.compare); with a seed noise floor, the floor's seeds
evaluated on those contexts too. The worker's I/O around the pure functions."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from torch import Tensor

from saeq.errors import InvalidSpec
from saeq.jobs.compare import compare_metrics, match_features, seed_noise_floor
from saeq.jobs.evaluate import EvalResult, evaluate_sae
from saeq.ml.models import LoadedModel
from saeq.ml.sinks import SinkReference
from saeq.specs import EvaluateSpec, TrainSpec
from saeq.specs.compare import FLOOR_STATISTIC, NO_FLOOR, CompareWith, Comparison, NoiseFloor, SeedFloor
from saeq.specs.manifests import TrainManifest
from saeq.specs.train_seeds import FloorRuns, NoFloor, floor_runs
from saeq_worker.resolve import SaeContext, load_trained_sae, read_published_manifest
from saeq_worker.running import RunningJob

FIELD = "spec.compare_with.sae"
FLOOR_FIELD = "spec.compare_with.seed_floor"


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
    floor, note = _noise_floor(job, ctx, lm, sinks, contexts, option, (option.sae.job_id, name_b), at=matching_at)
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
        metrics=compare_metrics(result_a, result_b, None if floor is None else floor.floors),
        features=features,
        noise_floor=floor,
        noise_note=note,
    )


def _floor_source(
    job: RunningJob, option: CompareWith, compared: Sequence[tuple[str, str | None]]
) -> tuple[str, FloorRuns] | str:
    """(train job id, its floor SAEs) the spec's seed_floor names, or why there is none."""
    if option.seed_floor == "off":
        return f"{NO_FLOOR} (seed_floor: off)"
    if isinstance(option.seed_floor, SeedFloor):
        ref = option.seed_floor
        train = read_published_manifest(job.store, ref.job_id, TrainManifest, field=FLOOR_FIELD)
        found = floor_runs(TrainSpec.model_validate(train.spec), ref.job_id, ref.config, compared)
        if isinstance(found, NoFloor):
            raise InvalidSpec(found.reason, field=f"{FLOOR_FIELD}.{found.field}")
        return ref.job_id, found
    reasons = []  # auto: A's train job, else B's
    for job_id in dict.fromkeys(j for j, _ in compared):
        train = read_published_manifest(job.store, job_id, TrainManifest, field=FLOOR_FIELD)
        found = floor_runs(TrainSpec.model_validate(train.spec), job_id, None, compared)
        if isinstance(found, FloorRuns):
            return job_id, found
        reasons.append(found.reason)
    return f"{NO_FLOOR} ({'; '.join(reasons)})"


def _noise_floor(
    job: RunningJob,
    ctx: SaeContext,
    lm: LoadedModel,
    sinks: SinkReference | None,
    contexts: Callable[[], Iterable[Tensor]],
    option: CompareWith,
    b: tuple[str, str],
    *,
    at: float,
) -> tuple[NoiseFloor | None, str]:
    """(the floor, the comparison's noise note): given values, or the floor seeds' figures on a pass
    each over `contexts()`; None without one (the note says why)."""
    if option.noise_floor:
        floors = {str(k): v for k, v in option.noise_floor.items()}
        return NoiseFloor(source="given", statistic="given in the spec's noise_floor", n=0, floors=floors), (
            "noise floor given in the spec, not measured here: " + ", ".join(f"{k} {v:.4g}" for k, v in floors.items())
        )
    a = (ctx.provenance.get("job_id"), ctx.name)
    compared = [(str(a[0]), a[1]), b] if a[0] else [b]
    source = _floor_source(job, option, compared)
    if isinstance(source, str):
        return None, source
    job_id, found = source
    results = []
    for i, run in enumerate(found.runs):
        job.report(at, "compare", f"seed noise floor: {run.name} ({i + 1} of {len(found.runs)})", force=True)
        sae, _, train = load_trained_sae(job.store, job_id, run.name, field=FLOOR_FIELD)
        if train.harvest.hook != ctx.hook or train.harvest.model.get("name") != ctx.model.name:
            raise InvalidSpec(
                f"train job {job_id} trained on {train.harvest.model.get('name')} at {train.harvest.hook}, "
                f"A is evaluated on {ctx.model.name} at {ctx.hook}",
                field=f"{FLOOR_FIELD}.job_id",
            )
        results.append(evaluate_sae(sae, lm, ctx.hook, contexts(), sinks=sinks, should_stop=job.should_stop))
        job.check()
    floors, sd, values = seed_noise_floor(results)
    floor = NoiseFloor(
        source="seeds",
        statistic=FLOOR_STATISTIC,
        n=len(found.runs),
        floors=floors,
        job_id=job_id,
        config=found.config,
        saes=[r.name for r in found.runs],
        seeds=[r.seed for r in found.runs],
        held_apart=found.held_apart,
        sd=sd,
        values=values,
    )
    held = f", held apart from {', '.join(found.held_apart)}" if found.held_apart else ""
    return floor, (
        f"seed noise floor: n={floor.n} seeds ({', '.join(floor.saes)}) of train job {job_id}{held}; "
        f"floor = {FLOOR_STATISTIC}"
    )
