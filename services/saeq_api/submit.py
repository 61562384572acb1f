"""Submit rules: what a job request must satisfy before its record is created, and the answer
(422 naming the field, 403 over a per-job quota, 429 over the queue) each refusal gets.

The routes are thin adapters over this module: `POST /v1/jobs` calls `create_job`, the live routes
call `referenced_job`; no route module imports another.
"""

from __future__ import annotations

import hashlib
import json
import math

from fastapi import HTTPException

from saeq import keys
from saeq.errors import InvalidSpec
from saeq.platform.admission import check_admissible
from saeq.platform.dispatch import job_queue
from saeq.platform.registry import IdempotencyConflict, MissingDependency, QuotaExceeded
from saeq.platform.teams import Principal, TeamQuota
from saeq.specs import (
    BUILTIN_D_MODEL,
    ActivationsRef,
    EvaluateSpec,
    HarvestSpec,
    JobCreate,
    JobSpec,
    LabelSpec,
    SteerSpec,
    TrainedSae,
    TrainSpec,
    UploadCorpus,
    costs,
)
from saeq.specs.compare import SeedFloor
from saeq.specs.train_seeds import NoFloor, floor_runs, sae_runs
from saeq_api.deps import Services
from saeq_api.memory_admission import check_memory


def unprocessable(field: str | None, message: str, status: int = 422) -> HTTPException:
    """The answer to a request refused for one field, shaped like FastAPI's own 422s."""
    loc = ["body", *field.split(".")] if field else ["body"]  # an InvalidSpec may name no field
    return HTTPException(status, detail=[{"loc": loc, "field": field, "msg": message, "type": "value_error"}])


def visible_job(svc: Services, job_id: str, who: Principal) -> dict | None:
    """The job if the caller may see it: their team's, or any for an admin. Another team's job is
    answered exactly like a missing one, so ids reveal nothing."""
    job = svc.registry.get(job_id) if len(job_id) == 32 else None
    return job if job is not None and who.sees(job) else None


def check_submit(svc: Services, body: JobCreate, who: Principal) -> TeamQuota:
    """Every check `create_job` makes before it writes anything (a dry run makes these alone): the
    deployment, the jobs the request reads, the team's per-job quota. -> the team's quota. Raises
    the HTTPException each refusal answers."""
    spec = body.spec
    corpus = getattr(spec, "corpus", None)
    if isinstance(corpus, UploadCorpus):
        owner = svc.registry.upload_owner(corpus.upload_id)
        if owner is None or not who.sees({"team": owner}) or not svc.store.list(keys.upload_prefix(corpus.upload_id)):
            raise unprocessable("spec.corpus.upload_id", f"no upload {corpus.upload_id!r}")
    _check_references(svc, spec, body.depends_on, who)  # first: limits then read only the team's own jobs
    quota = svc.teams.quota(who.team)
    _check_limits(svc, body, quota, who)
    for i, dep_id in enumerate(body.depends_on):
        dep = visible_job(svc, dep_id, who)
        if dep is None:
            raise unprocessable(f"depends_on.{i}", f"no job {dep_id!r}")
        if dep["state"] in ("failed", "cancelled"):
            raise unprocessable(f"depends_on.{i}", f"job {dep_id} {dep['state']}; this job could never start")
    check_memory(svc, spec, who)  # 422 when no advertised device can hold it (no ads: no check)
    return quota


def create_job(svc: Services, body: JobCreate, who: Principal, idempotency_key: str | None) -> tuple[dict, bool]:
    """Check the request against the deployment, the jobs it reads and the team's quota, then create
    its record: (record, created), created False when the Idempotency-Key names an earlier job.
    Raises the HTTPException each refusal answers."""
    spec = body.spec
    quota = check_submit(svc, body, who)
    try:
        record, created = svc.registry.create(
            kind=spec.kind,
            spec=spec.model_dump(mode="json"),
            queue=job_queue(spec),
            depends_on=list(body.depends_on),
            name=body.name,
            team=who.team,
            idempotency_key=idempotency_key,
            request_digest=hashlib.sha256(body.model_dump_json().encode()).hexdigest(),
            priority=body.priority,
            time_limit_s=body.time_limit_s or quota.max_time_s,
            max_queued=quota.max_queued,
            max_stored=quota.max_stored_jobs,
            submits_per_minute=quota.submits_per_minute,
        )
    except MissingDependency as e:  # expired or purged since it was checked above
        raise unprocessable(f"depends_on.{e.index}", str(e)) from None
    except QuotaExceeded as e:
        raise HTTPException(429, detail=str(e), headers={"Retry-After": str(e.retry_after_s)}) from None
    except IdempotencyConflict as e:
        raise HTTPException(
            422,
            detail=[
                {
                    "loc": ["header", "Idempotency-Key"],
                    "field": "Idempotency-Key",
                    "type": "value_error",
                    "msg": f"this Idempotency-Key came with another request, which created job {e.job_id}; "
                    "use a new key for a different job",
                }
            ],
        ) from None
    return record, created


def _check_limits(svc: Services, body: JobCreate, quota: TeamQuota, who: Principal) -> None:
    """A job larger than the team's per-job quota is refused (403), naming the field (saeq.specs.costs)."""
    spec = body.spec
    d_in = _train_d_in(svc, spec) if isinstance(spec, TrainSpec) else None
    try:
        costs.check_quota(
            spec,
            quota,
            team=who.team,
            d_in=d_in,
            context_len=_sae_context_len(svc, spec, who),
            time_limit_s=body.time_limit_s,
            n_features=_sae_width(svc, spec, who),
        )
    except costs.OverQuota as e:
        raise unprocessable(e.field, e.message, 403) from None


def _sae_context_len(svc: Services, spec: JobSpec, who: Principal) -> int | None:
    """The context length an evaluate or label job without its own takes from its SAE's harvest."""
    if not isinstance(spec, (EvaluateSpec, LabelSpec)) or not isinstance(spec.sae, TrainedSae) or spec.context_len:
        return None
    # A trained job's manifest records its harvest's context_len: it outlives the harvest's record.
    if (manifest := _published(svc, spec.sae.job_id, who)) is not None:
        return manifest["harvest"]["context_len"]
    train = visible_job(svc, spec.sae.job_id, who)  # checked visible, a train job, by _check_references
    activations = train["spec"]["activations"] if train else {}
    if activations.get("source") == "online":  # it read the model itself
        return activations["context_len"]
    harvest = visible_job(svc, activations["job_id"], who) if train else None
    return harvest["spec"]["context_len"] if harvest else None


def _sae_width(svc: Services, spec: JobSpec, who: Principal) -> int | None:
    """d_sae of a label job's trained SAE once its training published it (None: not yet known)."""
    if not isinstance(spec, LabelSpec) or not isinstance(spec.sae, TrainedSae):
        return None
    manifest = _published(svc, spec.sae.job_id, who)
    sae = manifest["saes"].get(spec.sae.name or next(iter(manifest["saes"]))) if manifest else None
    return sae["d_sae"] if sae else None


def _train_d_in(svc: Services, spec: TrainSpec) -> int | None:
    """d_in of a train job's activations: its harvest's d_model, or its online model's when known."""
    if isinstance(spec.activations, ActivationsRef):
        return _harvest_d_model(svc, spec.activations.job_id)
    return BUILTIN_D_MODEL if spec.activations.model.source == "builtin" else None


def _harvest_d_model(svc: Services, harvest_id: str) -> int | None:
    """d_model of a harvest's activations, when it is known before the harvest ends."""
    job = svc.registry.get(harvest_id)
    if job is None or job["kind"] != "harvest":
        return None
    if job.get("manifest_key"):
        return json.loads(svc.store.get(job["manifest_key"])).get("d_model")
    harvest = HarvestSpec.model_validate(job["spec"])
    if harvest.synthetic is not None:  # no model: the generator's width
        return harvest.synthetic.d_model
    return 576 if harvest.model.name.startswith("builtin:") else None  # SmolLM2-135M (FIELD-NOTES)


def referenced_job(svc: Services, job_id: str, kind: str, field: str, depends_on: list[str], who: Principal) -> dict:
    """A job whose output this spec reads: it must be visible to the caller, be of `kind`, and
    have succeeded or be one this job waits for."""
    job = visible_job(svc, job_id, who)
    if job is None:
        raise unprocessable(field, f"no job {job_id!r}")
    if job["kind"] != kind:
        raise unprocessable(field, f"job {job_id} is a {job['kind']} job, not a {kind} job")
    if job["state"] in ("failed", "cancelled"):
        raise unprocessable(field, f"job {job_id} {job['state']}; it has no output to read")
    if job["state"] != "succeeded" and job_id not in depends_on:
        raise unprocessable(
            field,
            f"job {job_id} is still {job['state']}: its output is unfinished; list it in depends_on to wait for it",
        )
    return job


def _check_deployment_allows(svc: Services, spec: JobSpec) -> None:
    """LLM endpoints from the deployment's allow-list, local paths under its roots (saeq.platform.admission)."""
    try:
        check_admissible(spec, llm_endpoints=svc.settings.llm_endpoints, local_path_roots=svc.settings.local_path_roots)
    except InvalidSpec as e:
        raise unprocessable(e.field, e.message) from None


def _check_references(svc: Services, spec: JobSpec, depends_on: list[str], who: Principal) -> None:
    _check_deployment_allows(svc, spec)
    if isinstance(spec, TrainSpec) and isinstance(spec.activations, ActivationsRef):  # online: no job to read
        harvest = referenced_job(svc, spec.activations.job_id, "harvest", "spec.activations.job_id", depends_on, who)
        if spec.activations.hook not in harvest["spec"]["hooks"]:
            raise unprocessable(
                "spec.activations.hook",
                f"harvest {harvest['id']} has hooks {harvest['spec']['hooks']}, not {spec.activations.hook!r}",
            )
    elif isinstance(spec, (EvaluateSpec, LabelSpec, SteerSpec)) and isinstance(spec.sae, TrainedSae):
        train = referenced_job(svc, spec.sae.job_id, "train", "spec.sae.job_id", depends_on, who)
        names = [run.name for run in sae_runs(TrainSpec.model_validate(train["spec"]))]  # with seeds: per seed
        if spec.sae.name is not None and spec.sae.name not in names:
            raise unprocessable("spec.sae.name", f"train job {train['id']} has SAEs {names}, not {spec.sae.name!r}")
    if isinstance(spec, EvaluateSpec) and spec.compare_with is not None:
        _check_compared(svc, spec, depends_on, who)
    if isinstance(spec, SteerSpec) and spec.label_job:
        referenced_job(svc, spec.label_job, "label", "spec.label_job", depends_on, who)
    _check_against_outputs(svc, spec, who)
    if isinstance(spec, EvaluateSpec) and spec.checks is not None and spec.checks.label_job:
        label = referenced_job(svc, spec.checks.label_job, "label", "spec.checks.label_job", depends_on, who)
        theirs, ours = label["spec"]["sae"], spec.sae.model_dump(mode="json")
        same = (
            theirs.get("job_id") == ours.get("job_id")
            and theirs.get("path") == ours.get("path")
            and (None in (theirs.get("name"), ours.get("name")) or theirs.get("name") == ours.get("name"))
        )
        if not same:
            raise unprocessable(
                "spec.checks.label_job", f"label job {label['id']} labelled the SAE {theirs}, not {ours}"
            )


def _check_compared(svc: Services, spec: EvaluateSpec, depends_on: list[str], who: Principal) -> None:
    """compare_with's SAE: of a train job, by a name it has, at the hook the evaluated SAE reads."""
    assert spec.compare_with is not None
    ref = spec.compare_with.sae
    train = referenced_job(svc, ref.job_id, "train", "spec.compare_with.sae.job_id", depends_on, who)
    names = [run.name for run in sae_runs(TrainSpec.model_validate(train["spec"]))]  # with seeds: per seed
    if ref.name is not None and ref.name not in names:
        raise unprocessable("spec.compare_with.sae.name", f"train job {train['id']} has SAEs {names}, not {ref.name!r}")
    hook_b = train["spec"]["activations"].get("hook")
    hook_a = spec.hook
    if hook_a is None and isinstance(spec.sae, TrainedSae):
        hook_a = (visible_job(svc, spec.sae.job_id, who) or {}).get("spec", {}).get("activations", {}).get("hook")
    if hook_a is not None and hook_b is not None and hook_a != hook_b:
        raise unprocessable(
            "spec.compare_with.sae.job_id",
            f"train job {train['id']} trained at {hook_b}, the evaluated SAE at {hook_a}",
        )
    floor = spec.compare_with.seed_floor
    if isinstance(floor, SeedFloor):  # the floor's seeds: of a seeds train job, at least 2 apart from A and B
        field = "spec.compare_with.seed_floor"
        seeded = referenced_job(svc, floor.job_id, "train", f"{field}.job_id", depends_on, who)
        compared = [(ref.job_id, ref.name)]
        if isinstance(spec.sae, TrainedSae):
            compared.insert(0, (spec.sae.job_id, spec.sae.name))
        found = floor_runs(TrainSpec.model_validate(seeded["spec"]), floor.job_id, floor.config, compared)
        if isinstance(found, NoFloor):
            raise unprocessable(f"{field}.{found.field}", found.reason)
        hook_floor = seeded["spec"]["activations"].get("hook")
        if hook_a is not None and hook_floor is not None and hook_floor != hook_a:
            raise unprocessable(
                f"{field}.job_id", f"train job {seeded['id']} trained at {hook_floor}, the evaluated SAE at {hook_a}"
            )


def _published(svc: Services, job_id: str, who: Principal) -> dict | None:
    """The manifest of a visible job that has succeeded; None before."""
    job = visible_job(svc, job_id, who)
    if job is None or job["state"] != "succeeded" or not job.get("manifest_key"):
        return None
    return json.loads(svc.store.get(job["manifest_key"]))


def _check_against_outputs(svc: Services, spec: JobSpec, who: Principal) -> None:
    """What the worker checks against a referenced job's output, checked at submit once that job has
    succeeded (422, naming the field); before, the worker still checks it when it runs."""
    if isinstance(spec, TrainSpec) and isinstance(spec.activations, ActivationsRef):
        harvest = _published(svc, spec.activations.job_id, who)
        entry = harvest["hooks"].get(spec.activations.hook) if harvest else None
        if harvest is not None and entry is not None:
            held_out = math.ceil(spec.validation_tokens / harvest["context_len"]) * harvest["context_len"]
            if held_out >= entry["n_tokens"]:
                raise unprocessable(
                    "spec.validation_tokens",
                    f"validation_tokens={spec.validation_tokens:,} "
                    f"leaves nothing to train on: harvest {spec.activations.job_id} holds "
                    f"{entry['n_tokens']:,} tokens",
                )
    elif isinstance(spec, (LabelSpec, SteerSpec)) and isinstance(spec.sae, TrainedSae):
        train = _published(svc, spec.sae.job_id, who)
        sae = train["saes"].get(spec.sae.name or next(iter(train["saes"]))) if train else None
        if sae is None:
            return
        d_sae = sae["d_sae"]
        fields = (
            [(f"spec.features.{j}", f) for j, f in enumerate(spec.features or [])]
            if isinstance(spec, LabelSpec)
            else [
                (f"spec.interventions.{i}.edits.{j}.feature", e.feature)
                for i, s in enumerate(spec.interventions)
                for j, e in enumerate(s.edits)
            ]
            # A conditional edit's trigger is a feature of the same SAE.
            + [
                (f"spec.interventions.{i}.edits.{j}.trigger.feature", e.trigger.feature)
                for i, s in enumerate(spec.interventions)
                for j, e in enumerate(s.edits)
                if e.trigger is not None
            ]
        )
        for field, feature in fields:
            if feature >= d_sae:
                raise unprocessable(field, f"feature {feature} is not in 0..{d_sae - 1} (the SAE has d_sae={d_sae:,})")
