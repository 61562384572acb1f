"""The dry run of `POST /v1/jobs`: the job's cost plan (saeq.platform.plans) and the answer a
submit would get, as a verdict. Reads only: no record, no message, no object is written."""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException

from saeq.platform import pools
from saeq.platform.dispatch import job_queue
from saeq.platform.memory_estimate import estimate_peak, model_shape
from saeq.platform.plans import plan_job
from saeq.platform.teams import Principal
from saeq.specs import HarvestSpec, JobCreate, JobSpec, TrainSpec
from saeq.specs.scheduling import MemoryEstimate, Plan
from saeq_api.deps import Services
from saeq_api.memory_admission import spec_resolver
from saeq_api.submit import _train_d_in, check_submit  # pyright: ignore[reportPrivateUsage]  (one rule, one place)


def plan_request(svc: Services, body: JobCreate, who: Principal) -> Plan:
    """The plan of `body` for the caller's team; a refusal of the submit checks is its verdict."""
    refusal = None
    try:
        check_submit(svc, body, who)
    except HTTPException as e:
        refusal = (e.status_code, _reasons(e.detail))
    spec = body.spec
    queue = job_queue(spec)
    return plan_job(
        svc.registry,
        spec.model_dump(mode="json"),
        team=who.team,
        priority=body.priority,
        queue=queue,
        quota=svc.teams.quota(who.team),
        refusal=refusal,
        peak_memory=_peak_memory(svc, spec, who, queue),
        d_in=_d_in(svc, spec),
        read_manifest=lambda key: json.loads(svc.store.get(key)),
    )


def _d_in(svc: Services, spec: JobSpec) -> int | None:
    """A harvest's d_model (from the model's shape, when the API knows it), a training's d_in."""
    if isinstance(spec, HarvestSpec):
        shape = model_shape(spec.model)
        return shape.d_model if shape else None
    return _train_d_in(svc, spec) if isinstance(spec, TrainSpec) else None


def _peak_memory(svc: Services, spec: JobSpec, who: Principal, queue: str) -> MemoryEstimate | None:
    """The estimate on the device kind the queue's workers advertise (CUDA when none do), reading
    the specs of the jobs this one reads as the caller may see them."""
    ads = [ad for ad in pools.live_workers(svc.registry.r) if ad.queue == queue]
    device = "cpu" if ads and all(ad.device == "cpu" for ad in ads) else "cuda"

    return estimate_peak(spec, device=device, resolve=spec_resolver(svc, who))


def _reasons(detail: Any) -> list[dict[str, str | None]]:
    """An HTTPException's detail (a list of FastAPI-shaped errors, or a message) as reasons."""
    if isinstance(detail, list):
        return [{"field": d.get("field"), "message": str(d.get("msg", ""))} for d in detail if isinstance(d, dict)]
    return [{"field": None, "message": str(detail)}]
