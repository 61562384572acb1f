"""`POST /v1/features/inspect`: the SAE's features on each token of a text, answered by the live
workers on the `steer` queue (the model and the SAE kept loaded) through the live path of
routes/live.py: the same per-team concurrency and rate limits, prompt cap and timeout."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request

from saeq.errors import InvalidSpec
from saeq.platform.admission import check_local_paths
from saeq.platform.live import MAX_CHARS_PER_TOKEN
from saeq.platform.teams import Principal
from saeq.specs import TrainedSae, TrainSpec
from saeq.specs.inspect import InspectRequest, InspectResult
from saeq.specs.train_seeds import sae_runs
from saeq_api.deps import Caller, Services, services
from saeq_api.routes.live import _ask_worker, _check_sae
from saeq_api.schemas import errors
from saeq_api.submit import referenced_job, unprocessable

router = APIRouter(prefix="/v1", tags=["live"], responses=errors(401, 413, 422, 429, 500, 503, 504))
Svc = Annotated[Services, Depends(services)]


@router.post("/features/inspect")
async def inspect_features(body: InspectRequest, svc: Svc, who: Caller, request: Request) -> InspectResult:
    """Per token: whether the sink rule leaves it out, its top features with activation, label and
    feature page; with `features`, those features' activations on every token."""
    try:  # local paths under the deployment's roots, as at submit; the worker checks again
        check_local_paths(body, svc.settings.local_path_roots, prefix="body")
    except InvalidSpec as e:
        raise unprocessable(e.field.removeprefix("body.") if e.field else None, e.message) from None
    _check_sae(svc, body.sae, [], "", who)
    quota = svc.teams.quota(who.team)
    field = "text" if body.messages is None else "messages"
    n_chars = len(body.text or "") + sum(len(m.content) for m in body.messages or [])
    if n_chars > quota.live_prompt_tokens * MAX_CHARS_PER_TOKEN:
        raise unprocessable(
            field,
            f"{n_chars} characters: more than {quota.live_prompt_tokens} tokens, this team's limit "
            f"(quota live_prompt_tokens), can hold at {MAX_CHARS_PER_TOKEN} characters a token",
        )
    label_job = _label_job(svc, body, who)
    payload = body.model_copy(update={"label_job": label_job}).model_dump(mode="json")
    return InspectResult.model_validate(await _ask_worker(svc, "inspect", payload, who, request))


def _label_job(svc: Services, body: InspectRequest, who: Principal) -> str | None:
    """The request's label job, checked to be of its SAE's train job; else the newest succeeded one
    of that SAE the caller sees (None: unlabelled)."""
    if not isinstance(body.sae, TrainedSae):
        if body.label_job:
            referenced_job(svc, body.label_job, "label", "label_job", [], who)
        return body.label_job
    if body.label_job:
        job = referenced_job(svc, body.label_job, "label", "label_job", [], who)
        if job["spec"]["sae"].get("job_id") != body.sae.job_id:
            raise unprocessable(
                "label_job", f"label job {body.label_job} labelled train job {job['spec']['sae'].get('job_id')}"
            )
        return body.label_job
    train = referenced_job(svc, body.sae.job_id, "train", "sae.job_id", [], who)
    first = sae_runs(TrainSpec.model_validate(train["spec"]))[0].name  # the manifest's first SAE
    name = body.sae.name or first
    team = None if who.is_admin else who.team
    for job in svc.registry.list(kind="label", state="succeeded", limit=500, team=team):  # newest first
        sae = job["spec"]["sae"]
        if (
            sae.get("source", "job") == "job"
            and sae.get("job_id") == body.sae.job_id
            and (sae.get("name") or first) == name
        ):
            return job["id"]
    return None
