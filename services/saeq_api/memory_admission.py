"""Memory-aware admission: a job whose estimated peak memory (saeq.platform.memory_estimate) fits
no device of the live workers on its queue (saeq.platform.pools) is refused at submit, 422 naming
the field to shrink first and both figures.

No worker advertising the job's queue means no check: a deployment (or a test) whose workers do not
advertise, or none started yet, admits as before. Nor is there one for a job the estimate cannot
judge (a steer job, a model whose shape is unknown to the API).
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import HTTPException

from saeq.platform import pools
from saeq.platform.dispatch import job_queue
from saeq.platform.memory_estimate import estimate_peak
from saeq.platform.teams import Principal
from saeq.specs import JobSpec, parse_spec
from saeq_api.deps import Services

GIB = float(1 << 30)


def check_memory(svc: Services, spec: JobSpec, who: Principal) -> None:
    """Raise the 422 when the busiest device `spec` needs is larger than every live device of its queue."""
    queue = job_queue(spec)
    gpus = getattr(spec, "gpus", 1)
    # A multi-GPU job can only go to a GPU worker holding that many devices; a CPU worker runs its
    # N ranks as processes on its one CPU (gloo), so any CPU worker of the queue can.
    on_queue = [ad for ad in pools.live_workers(svc.registry.r) if ad.queue == queue]
    if not on_queue:
        return
    ads = [ad for ad in on_queue if ad.device == "cpu" or ad.count >= gpus]
    if not ads:
        raise _refusal("spec.gpus", f"gpus={gpus}: no worker on queue {queue!r} holds {gpus} devices")
    biggest = max(ads, key=lambda ad: ad.memory_bytes)

    estimate = estimate_peak(spec, device=biggest.device, resolve=spec_resolver(svc, who))
    if estimate is None or estimate.total_bytes <= biggest.memory_bytes:
        return
    largest = ", ".join(f"{k} {v / GIB:.2f}" for k, v in sorted(estimate.parts.items(), key=lambda kv: -kv[1])[:3])
    raise _refusal(
        estimate.shrink_field,
        f"estimated peak memory {estimate.total_bytes / GIB:.2f} GiB exceeds the largest device on queue "
        f"{queue!r} ({biggest.memory_bytes / GIB:.2f} GiB, {biggest.device_name}); largest terms (GiB): "
        f"{largest}; shrink {estimate.shrink_field} first",
    )


def spec_resolver(svc: Services, who: Principal) -> Callable[[str], object]:
    """job id -> the spec of that job as `who` may see it, for the estimate to follow references
    (a training's harvest, an evaluation's training); None where it cannot."""

    def resolve(job_id: str) -> object:
        job = svc.registry.get(job_id) if len(job_id) == 32 else None
        if job is None or not who.sees(job) or not isinstance(job.get("spec"), dict):
            return None
        try:
            return parse_spec(job["spec"])
        except ValueError:  # a record from an older schema: no estimate rather than a refusal
            return None

    return resolve


def _refusal(field: str, message: str) -> HTTPException:
    loc = ["body", *field.split(".")]
    return HTTPException(422, detail=[{"loc": loc, "field": field, "msg": message, "type": "value_error"}])
