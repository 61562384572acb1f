"""Live steer requests (`POST /v1/steer`, `/v1/chat/completions`) answered by a worker that keeps
the model and the SAE loaded between requests, and the error reply of any live op. A coder is
steered where it reads and writes (saeq_worker.steer_requests)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from saeq.errors import InvalidSpec, JobError
from saeq.jobs.steer import chat_prompt, check_edits, generate, side_effects
from saeq.platform.store import ObjectStore
from saeq.specs import ModelSpec, SteerRequest
from saeq_worker.resolve import SaeContext, cached_model, sae_context
from saeq_worker.steer_requests import _edits, _prompt_ids, _sites, _with_sites

_LIVE: dict[str, SaeContext] = {}  # the SAEs of recent live requests, kept loaded
_LIVE_MAX = 4


def _live_context(ref: SteerRequest, store: ObjectStore) -> SaeContext:
    key = ref.model_dump_json()
    if key not in _LIVE:
        if len(_LIVE) >= _LIVE_MAX:
            _LIVE.pop(next(iter(_LIVE)))
        _LIVE[key] = sae_context(ref, store)
    return _LIVE[key]


def serve_steer(
    request: SteerRequest,
    store: ObjectStore,
    *,
    device: str,
    cache_dir: str,
    max_prompt_tokens: int | None = None,
    check: Callable[[], None] | None = None,
) -> dict:
    """One live request: the steered completion and, when asked, the default one beside it.
    `max_prompt_tokens`: the team's cap, counted after the chat template; `check` runs between
    generated tokens and before each load phase, and raises to stop (the caller gave up): a load
    cannot be stopped halfway, so a request given up during one goes no further."""
    t0 = time.monotonic()
    check = check or (lambda: None)
    ctx, sites = None, None
    if request.sae is not None:
        check()
        # Keyed by what picks the SAE, model and hook only, so other fields do not reload it.
        ctx = _live_context(SteerRequest(sae=request.sae, model=request.model, hook=request.hook, prompt="-"), store)
        sites = _sites(ctx, "sae")
        check_edits(_edits(request.interventions), ctx.sae, field="interventions", sites=sites)
    model = ctx.model if ctx else (request.model or ModelSpec())
    check()
    lm = cached_model(model, device, cache_dir)
    check()
    if request.messages is not None:
        ids = chat_prompt(lm, [m.model_dump() for m in request.messages])
    else:
        assert request.prompt is not None  # SteerRequest holds exactly one of prompt and messages
        ids = _prompt_ids(lm, request.prompt, request.chat)
    if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
        field = "prompt" if request.messages is None else "messages"
        raise InvalidSpec(
            f"the {field} is {len(ids)} tokens as the model reads it (chat template included); "
            f"this team's live requests may have at most {max_prompt_tokens} (quota "
            f"live_prompt_tokens)",
            field=field,
        )
    edits = _edits(request.interventions)
    steered = generate(
        lm,
        ids,
        max_new_tokens=request.max_new_tokens,
        hook=ctx.hook if ctx else None,
        sae=ctx.sae if ctx else None,
        edits=edits,
        temperature=request.temperature,
        seed=request.seed,
        check=check,
        sites=sites,
    )
    out = {
        "steered": steered.text,
        "steered_token_ids": steered.token_ids,
        "triggered_tokens": steered.triggered_tokens,
        "prompt_tokens": len(ids),
        "sae": _with_sites(ctx.provenance, sites) if ctx and sites else None,
        "hook": ctx.hook if ctx else None,
        "model": model.name,
    }
    if request.include_default and edits:
        default = generate(
            lm,
            ids,
            max_new_tokens=request.max_new_tokens,
            temperature=request.temperature,
            seed=request.seed,
            check=check,
        )
        assert ctx is not None  # edits are of an SAE's features: a request with edits names an SAE
        fx = side_effects(lm, ids, steered, hook=ctx.hook, sae=ctx.sae, edits=edits, sites=sites)
        out.update(
            default=default.text,
            kl_from_default=fx.kl_from_default,
            perplexity_unsteered=fx.perplexity_unsteered,
            intervals={k: e.model_dump(mode="json") for k, e in fx.intervals.items()},
        )
    elif request.include_default:
        out.update(default=steered.text, kl_from_default=0.0, perplexity_unsteered=None)
    out["seconds"] = time.monotonic() - t0
    return _finite(out)


def _finite(out: dict) -> dict:
    """NaN and infinity become null with a note saying why: JSON has no such numbers. Edits that
    overflow the model's dtype (float16 tops out at 65,504) give NaN logits, an empty completion
    a NaN perplexity."""
    bad = [k for k, v in out.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        out.update(
            {k: None for k in bad},
            notes=[
                f"{k} is not a finite number (the steered activations overflowed the model's dtype, or "
                f"nothing was generated): null"
                for k in bad
            ],
        )
    return out


def error_reply(e: Exception) -> dict:
    if isinstance(e, JobError):
        return {"error": {"code": e.code, "field": e.field, "message": e.message}}
    return {"error": {"code": "internal", "field": None, "message": f"{type(e).__name__}: {e}"}}
