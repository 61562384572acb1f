"""`POST /v1/features/contrast`: the SAE's features that separate two sets of texts, chosen on one
half of each set and scored on the other, answered by the live workers on the `steer` queue through
the live path of routes/live.py (the same per-team limits and timeout as inspect)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from saeq.errors import InvalidSpec
from saeq.platform.admission import check_local_paths
from saeq.specs.contrast import ContrastRequest, ContrastResult
from saeq_api.deps import Caller, Services, services
from saeq_api.routes.inspect import _label_job
from saeq_api.routes.live import _ask_worker, _check_sae
from saeq_api.schemas import errors
from saeq_api.submit import unprocessable

router = APIRouter(prefix="/v1", tags=["live"], responses=errors(401, 413, 422, 429, 500, 503, 504))
Svc = Annotated[Services, Depends(services)]


@router.post("/features/contrast")
async def contrast_features(body: ContrastRequest, svc: Svc, who: Caller, request: Request) -> ContrastResult:
    """Top features each way (higher on a, higher on b) by AUROC on the selection half, each with
    its held-out detection AUROC and Cohen's d and their 95% intervals, labels and feature pages."""
    try:  # local paths under the deployment's roots, as at submit; the worker checks again
        check_local_paths(body, svc.settings.local_path_roots, prefix="body")
    except InvalidSpec as e:
        raise unprocessable(e.field.removeprefix("body.") if e.field else None, e.message) from None
    _check_sae(svc, body.sae, [], "", who)
    label_job = _label_job(svc, body, who)  # pyright: ignore[reportArgumentType]  # reads .sae and .label_job only
    payload = body.model_copy(update={"label_job": label_job}).model_dump(mode="json")
    return ContrastResult.model_validate(await _ask_worker(svc, "contrast", payload, who, request))
