"""`POST /v1/compare`: two SAEs evaluated on the same held-out contexts, queued as one evaluate job
with `compare_with` (its manifest's `comparison` holds the result)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Response

from saeq.specs import EvaluateSpec, JobCreate
from saeq.specs.compare import CompareCreate
from saeq_api.deps import Caller, Services, services
from saeq_api.routes.jobs import submit_job
from saeq_api.schemas import JobPublic, errors

router = APIRouter(prefix="/v1", tags=["jobs"], responses=errors(401, 403, 404, 413, 422, 429, 503))
Svc = Annotated[Services, Depends(services)]


@router.post("/compare", status_code=201, response_model=JobPublic)
def compare(
    body: CompareCreate,
    svc: Svc,
    who: Caller,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> JobPublic:
    """Queue the comparison of SAE `a` with SAE `b`: each metric's paired difference with its 95%
    interval and verdict, and their features matched. The evaluate job's checks are off."""
    spec = EvaluateSpec(sae=body.a, max_tokens=body.max_tokens, checks=None, compare_with=body.compare_with())
    job = JobCreate(
        spec=spec, depends_on=body.depends_on, name=body.name or f"compare {body.a.job_id[:8]} {body.b.job_id[:8]}"
    )
    made = submit_job(job, svc, who, response, idempotency_key=idempotency_key, dry_run=False)
    assert isinstance(made, JobPublic)
    response.headers["Location"] = f"/v1/jobs/{made.id}"
    return made
