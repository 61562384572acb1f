"""Live requests answered in seconds by workers on the `steer` queue, which keep the model and the
SAE loaded: steering, an OpenAI-compatible chat endpoint with a `steering` field, label search."""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
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
from saeq_api import calibrated
from saeq_api.deps import Caller, Services, services
from saeq_api.metrics import observe_live
from saeq_api.schemas import ModelCard, ModelList, errors
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


def _check_sae(svc: Services, sae, interventions: list[Intervention], prefix: str, who: Principal) -> str | None:
    """A trained SAE must be the caller's team's and have succeeded; feature indices must be below
    its d_sae. Returns the name of the model it was trained on (None for an imported SAE)."""
    if not isinstance(sae, TrainedSae):
        return None
    train = referenced_job(svc, sae.job_id, "train", f"{prefix}sae.job_id", [], who)
    manifest = json.loads(svc.store.get(keys.manifest(train["id"])))
    name = sae.name or next(iter(manifest["saes"]))
    if name not in manifest["saes"]:
        raise unprocessable(
            f"{prefix}sae.name", f"train job {train['id']} has SAEs {sorted(manifest['saes'])}, not {name!r}"
        )
    d_sae = manifest["saes"][name]["d_sae"]
    for i, edit in enumerate(interventions):
        named = [(edit.feature, f"{prefix}interventions.{i}.feature")]
        if edit.trigger is not None:  # a conditional edit's trigger is a feature of the same SAE
            named.append((edit.trigger.feature, f"{prefix}interventions.{i}.trigger.feature"))
        for feature, field in named:
            if feature >= d_sae:
                raise unprocessable(field, f"feature {feature} is not in 0..{d_sae - 1} (SAE {name} has d_sae={d_sae})")
    return manifest["harvest"]["model"].get("name")


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
    used: list[dict] = []
    if body.sae is not None:  # edits without a value take the feature's calibrated one
        edits, used = calibrated.fill_values(svc, body.sae, body.interventions, who, "")
        body = body.model_copy(update={"interventions": edits})
    out = await _ask_worker(svc, "steer", body.model_dump(mode="json"), who, request)
    return out | ({"calibrated": used} if used else {})


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


SAE_MODEL = "saeq"
"""The chat `model` that means "the model the steering SAE was trained on" (the built-in model when
the request has no `steering`): what a caller passes who does not know the model's name."""


class ChatCompletionRequest(BaseModel):
    """OpenAI's chat-completions body (the fields saeq uses; others are accepted and ignored),
    plus `steering`."""

    model_config = ConfigDict(extra="allow")
    model: str = SAE_MODEL
    messages: list[ChatMessage] = Field(min_length=1, max_length=64)
    max_tokens: int | None = Field(default=None, ge=1, le=512)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=512)
    temperature: float | None = Field(default=None, ge=0.0, le=5.0)
    seed: Seed | None = None
    stream: bool = False
    """Server-sent events as OpenAI sends them; the completion is computed whole, then sent as
    chunks (docs/steer.md)."""
    stream_options: dict[str, Any] | None = None
    steering: Steering | None = None
    """saeq's extension (send it with the openai client's `extra_body`): which SAE and features."""


@router.get("/models")
def list_models(who: Caller) -> ModelList:
    """The `model` values a chat completion takes by name (any hub id, or a model directory under
    the deployment's local path roots, is taken too)."""
    return ModelList(
        data=[
            ModelCard(
                id=SAE_MODEL,
                description="the model the `steering` SAE was trained on; without `steering`, "
                f"{BUILTIN_MODEL}. The default when `model` is omitted.",
            ),
            ModelCard(id=BUILTIN_MODEL, description="SmolLM2-135M-Instruct, shipped with saeq (offline)"),
        ]
    )


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, svc: Svc, who: Caller, request: Request) -> Any:
    """OpenAI-compatible chat completions, steered when the body has `steering`; streamed as
    server-sent events with `stream: true`. Errors come in OpenAI's shape too (`error.message`,
    `error.param`), beside saeq's `detail`."""
    try:
        completion = await _chat(body, svc, who, request)
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
    if not body.stream:
        return completion
    usage = bool((body.stream_options or {}).get("include_usage"))
    return StreamingResponse(_sse(completion, usage), media_type="text/event-stream")


def _sse(completion: dict[str, Any], include_usage: bool):
    """The finished completion as OpenAI's `chat.completion.chunk` events: the role, the content a
    word at a time, the finish reason, the usage if asked for, then `[DONE]`."""
    choice = completion["choices"][0]
    head = {k: completion[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}

    def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        chunk = head | {"choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}
        return f"data: {json.dumps(chunk | extra)}\n\n"

    yield event({"role": "assistant", "content": ""})
    # Words with the spaces before them, so the pieces join to the text.
    for piece in re.split(r"(?<=\S)(?=\s)", choice["message"]["content"]):
        if piece:
            yield event({"content": piece})
    yield event({}, choice["finish_reason"])
    if include_usage:
        yield f"data: {json.dumps(head | {'choices': [], 'usage': completion['usage']})}\n\n"
    yield "data: [DONE]\n\n"


def _chat_model(body: ChatCompletionRequest) -> ModelSpec | None:
    """The model to run: None (the SAE's own) when steering with `saeq`, the built-in name or a
    trained SAE (which only reads the model it was trained on, whatever `model` says)."""
    steering = body.steering
    if steering is not None and (body.model in (SAE_MODEL, BUILTIN_MODEL) or isinstance(steering.sae, TrainedSae)):
        return None
    name = BUILTIN_MODEL if body.model == SAE_MODEL else body.model
    try:
        return ModelSpec(name=name)
    except ValidationError as e:  # its message, not pydantic's trailing "For further information" line
        raise unprocessable("model", f"{e.errors()[0]['msg']}; GET /v1/models lists the models to pass") from None


async def _chat(body: ChatCompletionRequest, svc: Services, who: Principal, http: Request) -> dict[str, Any]:
    steering = body.steering
    sae_model, used = None, []
    if steering is not None:
        sae_model = _check_sae(svc, steering.sae, steering.interventions, "steering.", who)
    model = _chat_model(body)
    try:
        request = SteerRequest(
            sae=steering.sae if steering else None,
            hook=steering.hook if steering else None,
            model=model,
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
    if steering is not None:  # edits without a value take the feature's calibrated one
        edits, used = calibrated.fill_values(svc, steering.sae, request.interventions, who, "steering.")
        request = request.model_copy(update={"interventions": edits})
    try:
        out = await _ask_worker(svc, "steer", request.model_dump(mode="json"), who, http, field_prefix="steering.")
    except HTTPException as e:
        detail: Any = e.detail  # a list of field errors for a 422 (Starlette types it str)
        field = detail[0]["field"] if e.status_code == 422 and isinstance(detail, list) else None
        if field is not None and field.removeprefix("steering.").startswith("model"):
            raise unprocessable("model", f"{detail[0]['msg']}; GET /v1/models lists the models to pass") from None
        raise
    n_out = len(out["steered_token_ids"])
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": sae_model if body.model == SAE_MODEL and sae_model else body.model,
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
        **({"saeq_calibrated": used} if used else {}),
    }
