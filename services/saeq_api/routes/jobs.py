"""Jobs: submit, read, list, cancel, follow, and their artifacts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Response

from saeq import keys
from saeq.dispatch import KIND_QUEUE
from saeq.registry import STATES, dispatch_ready
from saeq.specs import JOB_KINDS, EvaluateSpec, JobCreate, LabelSpec, SteerSpec, TrainedSae, TrainSpec, UploadCorpus
from saeq_api.deps import Services, services
from saeq_api.metrics import observe_submit
from saeq_api.schemas import Artifact, JobArtifacts, JobEvents, JobList, JobPublic

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
Svc = Annotated[Services, Depends(services)]


def _unprocessable(field: str, message: str) -> HTTPException:
    return HTTPException(422, detail=[{"loc": ["body", *field.split(".")], "field": field,
                                       "msg": message, "type": "value_error"}])


def _job_or_404(svc: Services, job_id: str) -> dict:
    job = svc.registry.get(job_id) if len(job_id) == 32 else None
    if job is None:
        raise HTTPException(404, detail=f"no job {job_id!r}")
    return job


@router.post("", status_code=201, response_model=JobPublic)
def submit_job(body: JobCreate, svc: Svc, response: Response,
               idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> JobPublic:
    """Queue a job. The spec's `kind` selects its model. With an `Idempotency-Key` header a repeated
    request returns the job the first one created (status 200) instead of a second job."""
    spec = body.spec
    corpus = getattr(spec, "corpus", None)
    if isinstance(corpus, UploadCorpus) and not svc.store.list(keys.upload_prefix(corpus.upload_id)):
        raise _unprocessable("spec.corpus.upload_id", f"no upload {corpus.upload_id!r}")
    _check_references(svc, spec, body.depends_on)
    for i, dep_id in enumerate(body.depends_on):
        dep = svc.registry.get(dep_id) if len(dep_id) == 32 else None
        if dep is None:
            raise _unprocessable(f"depends_on.{i}", f"no job {dep_id!r}")
        if dep["state"] in ("failed", "cancelled"):
            raise _unprocessable(f"depends_on.{i}", f"job {dep_id} {dep['state']}; this job could never start")
    record, created = svc.registry.create(
        kind=spec.kind, spec=spec.model_dump(mode="json"), queue=KIND_QUEUE[spec.kind],
        depends_on=list(body.depends_on), name=body.name, idempotency_key=idempotency_key)
    if created:
        observe_submit(spec.kind)
        dispatch_ready(svc.registry, record["id"], svc.send)
    else:
        response.status_code = 200
    return JobPublic.of(svc.registry.get(record["id"]))


def _referenced_job(svc: Services, job_id: str, kind: str, field: str, depends_on: list[str]) -> dict:
    """A job whose output this spec reads: it must exist, be of `kind`, and have succeeded or be
    one this job waits for."""
    job = svc.registry.get(job_id)
    if job is None:
        raise _unprocessable(field, f"no job {job_id!r}")
    if job["kind"] != kind:
        raise _unprocessable(field, f"job {job_id} is a {job['kind']} job, not a {kind} job")
    if job["state"] in ("failed", "cancelled"):
        raise _unprocessable(field, f"job {job_id} {job['state']}; it has no output to read")
    if job["state"] != "succeeded" and job_id not in depends_on:
        raise _unprocessable(field, f"job {job_id} is still {job['state']}: its output is unfinished; "
                                    "list it in depends_on to wait for it")
    return job


def _check_references(svc: Services, spec, depends_on: list[str]) -> None:
    if isinstance(spec, TrainSpec):
        harvest = _referenced_job(svc, spec.activations.job_id, "harvest", "spec.activations.job_id", depends_on)
        if spec.activations.hook not in harvest["spec"]["hooks"]:
            raise _unprocessable("spec.activations.hook", f"harvest {harvest['id']} has hooks "
                                                         f"{harvest['spec']['hooks']}, not {spec.activations.hook!r}")
    elif isinstance(spec, (EvaluateSpec, LabelSpec, SteerSpec)) and isinstance(spec.sae, TrainedSae):
        train = _referenced_job(svc, spec.sae.job_id, "train", "spec.sae.job_id", depends_on)
        names = [s.get("name") or f"sae{i}" for i, s in enumerate(train["spec"]["saes"])]
        if spec.sae.name is not None and spec.sae.name not in names:
            raise _unprocessable("spec.sae.name", f"train job {train['id']} has SAEs {names}, not {spec.sae.name!r}")
    if isinstance(spec, SteerSpec) and spec.label_job:
        _referenced_job(svc, spec.label_job, "label", "spec.label_job", depends_on)
    if isinstance(spec, EvaluateSpec) and spec.checks is not None and spec.checks.label_job:
        label = _referenced_job(svc, spec.checks.label_job, "label", "spec.checks.label_job", depends_on)
        theirs, ours = label["spec"]["sae"], spec.sae.model_dump(mode="json")
        same = theirs.get("job_id") == ours.get("job_id") and theirs.get("path") == ours.get("path") and (
            None in (theirs.get("name"), ours.get("name")) or theirs.get("name") == ours.get("name"))
        if not same:
            raise _unprocessable("spec.checks.label_job", f"label job {label['id']} labelled the SAE "
                                                          f"{theirs}, not {ours}")


@router.get("", response_model=JobList)
def list_jobs(svc: Svc,
              kind: Annotated[str | None, Query(description=f"one of {', '.join(JOB_KINDS)}")] = None,
              state: Annotated[str | None, Query(description=f"one of {', '.join(STATES)}")] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 50,
              before: Annotated[float | None, Query(description="created_at cursor from the previous page")] = None,
              ) -> JobList:
    """Jobs, newest first, filtered by kind and state, a page at a time."""
    if kind is not None and kind not in JOB_KINDS:
        raise HTTPException(422, detail=f"kind must be one of {', '.join(JOB_KINDS)}")
    if state is not None and state not in STATES:
        raise HTTPException(422, detail=f"state must be one of {', '.join(STATES)}")
    jobs = svc.registry.list(kind=kind, state=state, limit=limit + 1, before=before)
    more = len(jobs) > limit
    jobs = jobs[:limit]
    return JobList(jobs=[JobPublic.of(j) for j in jobs],
                   next_before=jobs[-1]["created_at"] if more else None)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, svc: Svc) -> JobPublic:
    return JobPublic.of(_job_or_404(svc, job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: str, svc: Svc) -> JobPublic:
    """Cancel a queued job at once; a running job stops within seconds. Cancelling an ended job
    changes nothing."""
    _job_or_404(svc, job_id)
    svc.registry.request_cancel(job_id)
    job = svc.registry.get(job_id)
    if job["state"] == "cancelled":
        for dep in svc.registry.dependents(job_id):
            dispatch_ready(svc.registry, dep, svc.send)
    return JobPublic.of(job)


@router.get("/{job_id}/events", response_model=JobEvents)
def job_events(job_id: str, svc: Svc, after: Annotated[str, Query(pattern=r"^\d+-\d+$")] = "0-0") -> JobEvents:
    """The job's log of phases and progress messages; pass the last event's id as `after`."""
    _job_or_404(svc, job_id)
    return JobEvents(events=svc.registry.events(job_id, after=after))


@router.get("/{job_id}/artifacts", response_model=JobArtifacts)
def job_artifacts(job_id: str, svc: Svc) -> JobArtifacts:
    """Objects the job wrote, with presigned download URLs."""
    job = _job_or_404(svc, job_id)
    infos = svc.store.list(keys.job_prefix(job_id))
    return JobArtifacts(
        job_id=job_id, published=job["manifest_key"] is not None, manifest_key=job["manifest_key"],
        artifacts=[Artifact(key=i.key, size=i.size, url=svc.store.download_url(i.key)) for i in infos])
