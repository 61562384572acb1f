"""Live requests answered in seconds by workers on the `steer` queue, which keep the model and the
SAE loaded: steering, an OpenAI-compatible chat endpoint with a `steering` field, label search."""

from __future__ import annotations

import json
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from saeq import keys
from saeq.errors import InvalidSpec
from saeq.platform.admission import check_local_paths
from saeq.platform.dispatch import LIVE_QUEUE, LIVE_TASK
from saeq.platform.live import MAX_CHARS_PER_TOKEN, LiveRequests, prompt_chars, reply_key
from saeq.platform.teams import Principal
from saeq.specs import (
    BUILTIN_MODEL,
    ChatMessage,
    Intervention,
    LabelSearch,
    ModelSpec,
    SaeRef,
    Seed,
    SteerRequest,
    TrainedSae,
)
from saeq_api.deps import Caller, Services, services
from saeq_api.metrics import observe_live
from saeq_api.schemas import errors
from saeq_api.submit import referenced_job, unprocessable

router = APIRouter(prefix="/v1", tags=["live"], responses=errors(401, 413, 422, 429, 500, 503, 504))
Svc = Annotated[Services, Depends(services)]


async def _ask_worker(
    svc: Services, op: str, payload: dict, who: Principal, request: Request, *, field_prefix: str = ""
) -> dict:
    t0, outcome = time.monotonic(), "error"
    try:
        data = await _round_trip(svc, op, payload, who, request, field_prefix)
        outcome = "ok"
        return data
    finally:
        observe_live(op, outcome, time.monotonic() - t0)


async def _round_trip(
    svc: Services, op: str, payload: dict, who: Principal, request: Request, field_prefix: str
) -> dict:
    quota = svc.teams.quota(who.team)
    if op == "steer":
        field, n_chars = prompt_chars(payload)
        if n_chars > quota.live_prompt_tokens * MAX_CHARS_PER_TOKEN:
            raise unprocessable(
                field,
                f"{n_chars} characters: more than {quota.live_prompt_tokens} tokens, this "
                f"team's limit (quota live_prompt_tokens), can hold at "
                f"{MAX_CHARS_PER_TOKEN} characters a token",
            )
    request_id, timeout = uuid.uuid4().hex, svc.settings.live_timeout_s
    live = LiveRequests(svc.registry.r)
    # A slot is held until the answer, or until the worker that took a request its caller gave up on
    # lets go of it; `hold_s` frees it if this process (or that worker) dies.
    hold_s = timeout + 30
    refusal = await run_in_threadpool(live.admit, who.team, request_id, quota, hold_s=hold_s)
    if refusal is not None:
        raise HTTPException(
            429,
            headers={"Retry-After": str(refusal.retry_after_s)},
            detail=(
                f"team {who.team!r} has {quota.live_concurrency} live requests in progress, its limit "
                f"(quota live_concurrency)"
                if refusal.limit == "live_concurrency"
                else f"team {who.team!r} made {quota.live_per_minute} live requests in the last 60 s, its limit "
                f"(quota live_per_minute); retry in {refusal.retry_after_s} s"
            ),
        )
    entry = {
        "id": request_id,
        "team": who.team,
        "op": op,
        "payload": payload,
        "max_prompt_tokens": quota.live_prompt_tokens,
        "deadline": time.time() + timeout,
        "hold_s": hold_s,
    }
    raw, reply = None, None
    try:
        raw = await run_in_threadpool(live.enqueue, who.team, entry, ttl_s=timeout + 60)
        svc.celery.send_task(LIVE_TASK, args=[request_id], queue=LIVE_QUEUE)
        deadline = time.monotonic() + timeout
        while reply is None and time.monotonic() < deadline:
            # Short waits: a Redis connection may have a socket timeout shorter than a model load.
            reply = await run_in_threadpool(svc.registry.r.blpop, [reply_key(request_id)], 0.25)
            if reply is None and await request.is_disconnected():
                raise HTTPException(499, detail="the client closed the connection")
    finally:
        # Not awaited: this runs even in a cancelled task, where a further await would be cancelled too.
        # Nobody wants the answer (504, a client gone, an error): withdrawn, the slot is this request's
        # to free; taken, the worker frees it when it stops, so a team cannot have more requests
        # computing than its live_concurrency by leaving them.
        if reply is not None or raw is None or live.cancel(who.team, request_id, raw, op):
            live.release(who.team, request_id)
    if reply is None:
        raise HTTPException(
            504,
            detail=f"no worker on the '{LIVE_QUEUE}' queue answered within {timeout:g} s "
            "(setting live_timeout_s); the request was cancelled",
        )
    data = json.loads(reply[1])
    if "error" in data:
        e = data["error"]
        if e["code"] in ("invalid_spec", "not_found", "upstream_failed"):
            field = (e["field"] or "").removeprefix("spec.")
            # The prompt is the chat request's own field; the others are its steering's.
            raise unprocessable(field if field in ("prompt", "messages") else field_prefix + field, e["message"])
        raise HTTPException(500, detail=f"{e['code']}: {e['message']}")
    return data


def _check_sae(svc: Services, sae, interventions: list[Intervention], prefix: str, who: Principal) -> None:
    """A trained SAE must be the caller's team's and have succeeded; feature indices must be below
    its d_sae."""
    if not isinstance(sae, TrainedSae):
        return
    train = referenced_job(svc, sae.job_id, "train", f"{prefix}sae.job_id", [], who)
    manifest = json.loads(svc.store.get(keys.manifest(train["id"])))
    name = sae.name or next(iter(manifest["saes"]))
    if name not in manifest["saes"]:
        raise unprocessable(
            f"{prefix}sae.name", f"train job {train['id']} has SAEs {sorted(manifest['saes'])}, not {name!r}"
        )
    d_sae = manifest["saes"][name]["d_sae"]
    for i, edit in enumerate(interventions):
        if edit.feature >= d_sae:
            raise unprocessable(
                f"{prefix}interventions.{i}.feature",
                f"feature {edit.feature} is not in 0..{d_sae - 1} (SAE {name} has d_sae={d_sae})",
            )


def _check_paths(svc: Services, request: SteerRequest, fields: dict[str, str] | None = None) -> None:
    """Local paths under the deployment's roots, as at submit (saeq.platform.admission); the worker checks
    again. `fields` renames a field of the request to the body's own (the chat endpoint's `model`)."""
    try:
        check_local_paths(request, svc.settings.local_path_roots, prefix="body")
    except InvalidSpec as e:
        field = e.field.removeprefix("body.") if e.field else None
        raise unprocessable((fields or {}).get(field, field) if field else None, e.message) from None


@router.post("/steer")
async def steer(body: SteerRequest, svc: Svc, who: Caller, request: Request) -> dict:
    """Generate with features boosted, clamped or ablated; the default completion beside it (same
    seed) with the KL of the next-token distribution and the perplexity under the unsteered model."""
    _check_paths(svc, body)
    _check_sae(svc, body.sae, body.interventions, "", who)
    return await _ask_worker(svc, "steer", body.model_dump(mode="json"), who, request)


@router.post("/labels/search")
async def search_labels(body: LabelSearch, svc: Svc, who: Caller, request: Request) -> dict:
    """Features of a label job whose labels are closest in meaning to `query` (MiniLM embeddings)."""
    referenced_job(svc, body.label_job, "label", "label_job", [], who)
    return await _ask_worker(svc, "search_labels", body.model_dump(mode="json"), who, request)


class Steering(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    sae: SaeRef
    hook: str | None = None
    interventions: list[Intervention] = Field(min_length=1, max_length=16)


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat-completions body (the fields saeq uses; others are accepted and ignored),
    plus `steering`."""

    model_config = ConfigDict(extra="allow")
    model: str = BUILTIN_MODEL
    messages: list[ChatMessage] = Field(min_length=1, max_length=64)
    max_tokens: int | None = Field(default=None, ge=1, le=512)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=512)
    temperature: float | None = Field(default=None, ge=0.0, le=5.0)
    seed: Seed | None = None
    steering: Steering | None = None
    """saeq's extension (send it with the openai client's `extra_body`): which SAE and features."""


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, svc: Svc, who: Caller, request: Request) -> Any:
    """OpenAI-compatible chat completions, steered when the body has `steering`. Errors come in
    OpenAI's shape too (`error.message`, `error.param`), beside saeq's `detail`."""
    try:
        return await _chat(body, svc, who, request)
    except HTTPException as e:
        raw: Any = e.detail  # Starlette types it str; saeq's 422s carry a list of field errors
        detail: list[dict[str, Any]] = raw if isinstance(raw, list) else [{"field": None, "msg": str(raw)}]
        first = detail[0]
        message = f"{first['field']}: {first['msg']}" if first.get("field") else first["msg"]
        return JSONResponse(
            status_code=e.status_code,
            headers=e.headers,
            content={
                "error": {
                    "message": message,
                    "type": "invalid_request_error" if e.status_code < 500 else "server_error",
                    "param": first.get("field"),
                    "code": None,
                },
                "detail": e.detail,
            },
        )


async def _chat(body: ChatCompletionRequest, svc: Services, who: Principal, http: Request) -> dict[str, Any]:
    try:
        model = ModelSpec(name=body.model)
    except ValidationError as e:  # its message, not pydantic's trailing "For further information" line
        raise unprocessable("model", e.errors()[0]["msg"]) from None
    steering = body.steering
    if steering is not None:
        _check_sae(svc, steering.sae, steering.interventions, "steering.", who)
    try:
        request = SteerRequest(
            sae=steering.sae if steering else None,
            hook=steering.hook if steering else None,
            model=None if steering and body.model == BUILTIN_MODEL else model,
            messages=body.messages,
            interventions=steering.interventions if steering else [],
            max_new_tokens=body.max_completion_tokens or body.max_tokens or 64,
            temperature=body.temperature or 0.0,
            seed=body.seed or 0,
            include_default=False,
        )
    except ValidationError as e:  # cross-field rules (an imported SAE needs a hook, ...): the caller's fault
        first = e.errors()[0]
        raise unprocessable(".".join(["steering", *map(str, first["loc"])]), first["msg"]) from None
    _check_paths(svc, request, {"model.name": "model", "sae.path": "steering.sae.path"})
    out = await _ask_worker(svc, "steer", request.model_dump(mode="json"), who, http, field_prefix="steering.")
    n_out = len(out["steered_token_ids"])
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": out["steered"]},
                "finish_reason": "length" if n_out >= request.max_new_tokens else "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": out["prompt_tokens"],
            "completion_tokens": n_out,
            "total_tokens": out["prompt_tokens"] + n_out,
        },
    }
