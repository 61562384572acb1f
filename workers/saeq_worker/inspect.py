"""The live `inspect` op (`POST /v1/features/inspect`): a text read by the model and the SAE this
worker keeps loaded, each token's top features named by a label job's labels and linked to their
feature pages. A transcoder's features are those of its input hook, a crosscoder's of all its
layers read in one pass."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from saeq.errors import InvalidSpec
from saeq.jobs.inspect import inspect_tokens
from saeq.jobs.steer import chat_prompt
from saeq.ml.explainers import token_pieces
from saeq.ml.features import coder_input_hooks
from saeq.platform.store import ObjectStore
from saeq.specs.inspect import FeatureActivation, InspectedToken, InspectRequest, InspectResult
from saeq_worker.live_cache import live_labels, live_sae
from saeq_worker.resolve import cached_model, sink_reference

LIVE_THREADS = 1
"""Torch threads an inspect request computes with (at most the process's). A live text is a few dozen
tokens: its matrix products are too small to gain from a second thread, and on a shared machine
torch's lock-step parallel loops wait for a busy core. Measured 2026-12-02 on 2 shared cores at load
11: inspect of 64 tokens (SmolLM2 to block 14, SAE of 4,608) 0.29 s median on one thread, 1.68 s on
two (0.7-5.9 s); the switch there and back costs nothing measurable (0.23 s median)."""


def serve_inspect(
    request: InspectRequest,
    store: ObjectStore,
    *,
    device: str,
    cache_dir: str,
    max_prompt_tokens: int | None = None,
    check: Callable[[], None] | None = None,
) -> dict:
    """One live inspect request -> an InspectResult as JSON. `max_prompt_tokens`: the team's cap,
    counted after the chat template; `check` runs before each load phase and raises to stop."""
    t0 = time.monotonic()
    check = check or (lambda: None)
    check()
    ctx = live_sae(request, store)
    reads = coder_input_hooks(ctx.sae, ctx.hook, ctx.layer_hooks, field="sae")
    sinks = sink_reference(request, ctx.sink_info)
    labels, pages, label_job = {}, False, request.label_job
    if label_job:
        check()
        labels, pages = live_labels(store, label_job, ctx)
    check()
    lm = cached_model(ctx.model, device, cache_dir)
    check()
    field = "text" if request.messages is None else "messages"
    if request.messages is not None:
        ids = chat_prompt(lm, [m.model_dump() for m in request.messages])
    else:
        ids = lm.tokenizer(request.text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise InvalidSpec("the text has no tokens as the model reads it", field=field)
    if max_prompt_tokens is not None and len(ids) > max_prompt_tokens:
        raise InvalidSpec(
            f"the {field} is {len(ids)} tokens as the model reads it (chat template included); this "
            f"team's live requests may have at most {max_prompt_tokens} (quota live_prompt_tokens)",
            field=field,
        )
    with _torch_threads(LIVE_THREADS):
        out = inspect_tokens(lm, ctx.sae, reads, ids, sinks=sinks, top_k=request.top_k, features=request.features)
    pieces = token_pieces(lm.tokenizer)(ids)

    def named(f: int, a: float) -> FeatureActivation:
        link = f"/browse#/feature/{label_job}/{f}" if pages else None
        return FeatureActivation(feature=f, activation=a, label=labels.get(f), link=link)

    tokens = [
        InspectedToken(
            position=t,
            token_id=ids[t],
            text=pieces[t],
            norm=out.norms[t],
            sink=out.sinks[t],
            top=[named(f, a) for f, a in zip(out.top_features[t], out.top_activations[t], strict=True)],
            activations=out.chosen[t] if out.chosen else None,
        )
        for t in range(len(ids))
    ]
    result = InspectResult(
        sae=ctx.provenance,
        model=ctx.model.name,
        hook=ctx.hook,
        label_job=request.label_job,
        sink_rule=None if sinks is None else {"median_norm": sinks.median_norm, "norm_factor": sinks.norm_factor},
        features=request.features,
        tokens=tokens,
        n_sinks=sum(s is not None for s in out.sinks),
        seconds=time.monotonic() - t0,
    )
    return result.model_dump(mode="json")


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Compute with at most `n` torch threads inside, the process's count again after (its jobs')."""
    before = torch.get_num_threads()
    torch.set_num_threads(min(n, before))
    try:
        yield
    finally:
        torch.set_num_threads(before)
