"""Jobs: submit, read, list, cancel, follow, and their artifacts."""

from __future__ import annotations

import math
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Response

from saeq import keys
from saeq.platform.registry import STATES, after_finish, dispatch_ready
from saeq.platform.scheduler import schedule
from saeq.platform.teams import Principal
from saeq.specs import JOB_KINDS, JobCreate
from saeq.specs.scheduling import Plan
from saeq_api.deps import Caller, Services, services
from saeq_api.dry_run import plan_request
from saeq_api.metrics import observe_submit
from saeq_api.schemas import Artifact, JobArtifacts, JobEvents, JobList, JobPublic, JobSummary, errors
from saeq_api.submit import create_job, visible_job

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=errors(401, 403, 404, 413, 429, 503))
Svc = Annotated[Services, Depends(services)]
_CURSOR = r"^[0-9]+(\.[0-9]*)?([eE][+-]?[0-9]+)?(_[0-9a-f]{1,64})?$"
_LOCATION = {"description": "the job's URL, `/v1/jobs/{id}` (not on a dry run)", "schema": {"type": "string"}}


def _job_or_404(svc: Services, job_id: str, who: Principal) -> dict:
    job = visible_job(svc, job_id, who)
    if job is None:
        raise HTTPException(404, detail=f"no job {job_id!r}")
    return job


@router.post(
    "",
    status_code=201,
    response_model=JobPublic | Plan,
    responses={
        201: {"description": "The job, queued", "headers": {"Location": _LOCATION}},
        200: {
            "model": JobPublic | Plan,
            "description": "The job a repeated Idempotency-Key created; with dry_run=true, the job's Plan",
            "headers": {"Location": _LOCATION},
        },
    },
)
def submit_job(
    body: JobCreate,
    svc: Svc,
    who: Caller,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    dry_run: Annotated[
        bool, Query(description="answer the job's cost Plan (200) and queue nothing, write nothing")
    ] = False,
) -> JobPublic | Plan:
    """Queue a job for the caller's team. The spec's `kind` selects its model. With an
    `Idempotency-Key` header a repeated request returns the job the first one created (status 200)
    instead of a second job. Beyond the team's quota: 403 (a job too large) or 429 (too many
    waiting). With `dry_run=true`: the job's Plan (tokens, bytes, peak memory, wall time and
    GPU-seconds with their basis, the jobs ahead, and those refusals as a verdict), status 200."""
    if dry_run:
        response.status_code = 200
        return plan_request(svc, body, who)
    record, created = create_job(svc, body, who, idempotency_key)
    response.headers["Location"] = f"{router.prefix}/{record['id']}"
    if not created:
        response.status_code = 200
    else:
        observe_submit(body.spec.kind)
    # On a repeat too: the first request may have died (or met a Redis outage) between creating the
    # job and sending it. Dispatching is once only (one script), so a job already sent stays as is.
    if dispatch_id := dispatch_ready(svc.registry, record["id"], svc.send, record):
        record = {**record, "dispatched": True, "dispatch_id": dispatch_id}
    elif record["depends_on"] == []:
        schedule(svc.registry, svc.send)  # it waits for a slot: its turn, or a preemption for it
    return JobPublic.of(record)


@router.get("", response_model=JobList)
def list_jobs(
    svc: Svc,
    who: Caller,
    kind: Literal[JOB_KINDS] | None = None,  # type: ignore[valid-type]
    state: Literal[STATES] | None = None,  # type: ignore[valid-type]
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[
        str | None,
        Query(
            pattern=_CURSOR,
            max_length=100,
            description="`next_before` of the previous page (a bare created_at, the old cursor, works too)",
        ),
    ] = None,
    team: Annotated[
        str | None, Query(max_length=63, description="admins only: another team's jobs; default: every team's")
    ] = None,
) -> JobList:
    """The team's jobs (an admin's: every team's), newest first, filtered by kind and state, a page
    at a time: summaries without their specs (`GET /v1/jobs/{id}` has the spec), a few KB each."""
    if team is not None and not who.is_admin and team != who.team:
        raise HTTPException(403, detail=f"only admins list other teams' jobs; your team is {who.team!r}")
    before_at, before_id = _parse_cursor(before)
    jobs = svc.registry.list(
        kind=kind,
        state=state,
        limit=limit + 1,
        before=before_at,
        before_id=before_id,
        team=team if who.is_admin else who.team,
        summary=True,
    )
    more = len(jobs) > limit
    jobs = jobs[:limit]
    # (created_at, id): jobs sharing the last one's created_at are not skipped by the next page.
    cursor = f"{float(jobs[-1]['created_at'])!r}_{jobs[-1]['id']}" if more else None
    return JobList(jobs=[JobSummary.of(j) for j in jobs], next_before=cursor)


def _parse_cursor(before: str | None) -> tuple[float | None, str | None]:
    if before is None:
        return None, None
    at, _, job_id = before.partition("_")
    value = float(at)
    if not math.isfinite(value):
        raise HTTPException(
            422,
            detail=[
                {"loc": ["query", "before"], "field": "query.before", "type": "value_error", "msg": "not a cursor"}
            ],
        )
    return value, job_id or None


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, svc: Svc, who: Caller) -> JobPublic:
    return JobPublic.of(_job_or_404(svc, job_id, who))


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: str, svc: Svc, who: Caller) -> JobPublic:
    """Cancel a queued job at once; a running job stops within seconds. Cancelling an ended job
    changes nothing."""
    _job_or_404(svc, job_id, who)
    svc.registry.request_cancel(job_id)
    job = _job_or_404(svc, job_id, who)  # read again: the cancel changed it (or it was purged meanwhile)
    if job["state"] == "cancelled":
        after_finish(svc.registry, job_id, svc.send)
    return JobPublic.of(job)


@router.get("/{job_id}/events", response_model=JobEvents)
def job_events(
    job_id: str,
    svc: Svc,
    who: Caller,
    response: Response,
    after: Annotated[str, Query(pattern=r"^[0-9]+-[0-9]+$", max_length=41)] = "0-0",
    limit: Annotated[int, Query(ge=1, le=500)] = 500,
) -> JobEvents:
    """The job's log of phases and progress messages, `limit` at a time; pass the last event's id
    (`next_after`) as `after` (ASCII digits: Redis refuses the other Unicode digits that `\\d`
    would let through). `more` (and a `Link: rel="next"` header) says the log goes on."""
    if any(int(part) >= 1 << 64 for part in after.split("-")):
        raise HTTPException(
            422,
            detail=[
                {
                    "loc": ["query", "after"],
                    "field": "query.after",
                    "type": "value_error",
                    "msg": "an event id is two numbers below 2**64, as `<ms>-<seq>`",
                }
            ],
        )
    _job_or_404(svc, job_id, who)
    events = svc.registry.events(job_id, after=after, count=limit + 1)
    more = len(events) > limit
    events = events[:limit]
    next_after = events[-1]["id"] if events else after
    if more:
        response.headers["Link"] = f'<{router.prefix}/{job_id}/events?after={next_after}&limit={limit}>; rel="next"'
    return JobEvents.model_validate({"events": events, "more": more, "next_after": next_after})


@router.get("/{job_id}/artifacts", response_model=JobArtifacts)
def job_artifacts(job_id: str, svc: Svc, who: Caller) -> JobArtifacts:
    """Objects the job wrote, with presigned download URLs (issued only to the job's team)."""
    job = _job_or_404(svc, job_id, who)
    infos = svc.store.list(keys.job_prefix(job_id))
    return JobArtifacts(
        job_id=job_id,
        published=job["manifest_key"] is not None,
        manifest_key=job["manifest_key"],
        artifacts=[Artifact(key=i.key, size=i.size, url=svc.store.download_url(i.key)) for i in infos],
    )
