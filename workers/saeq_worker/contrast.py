"""The live `contrast` op (`POST /v1/features/contrast`): two sets of texts (inline, or a builtin
corpus's documents of a topic) read by the model and the SAE this worker keeps loaded (the inspect
op's caches), the features that separate them named by a label job's labels."""

from __future__ import annotations

import time
from collections.abc import Callable

from saeq.errors import InvalidSpec
from saeq.jobs.contrast import contrast_features, held_out_split, text_activations
from saeq.ml.corpus import builtin_documents, builtin_order
from saeq.ml.features import coder_input_hooks
from saeq.ml.models import LoadedModel
from saeq.platform.store import ObjectStore
from saeq.specs.contrast import MAX_TOTAL_TOKENS, ContrastFeature, ContrastRequest, ContrastResult, TextSet
from saeq_worker.live_cache import live_labels, live_sae
from saeq_worker.resolve import cached_model, sink_reference


def serve_contrast(
    request: ContrastRequest,
    store: ObjectStore,
    *,
    device: str,
    cache_dir: str,
    max_prompt_tokens: int | None = None,
    check: Callable[[], None] | None = None,
) -> dict:
    """One live contrast request -> a ContrastResult as JSON. Each text counts against the team's
    `max_prompt_tokens` as a prompt would; `check` runs before each phase and raises to stop."""
    t0 = time.monotonic()
    check = check or (lambda: None)
    if max_prompt_tokens is not None and request.max_tokens > max_prompt_tokens:
        raise InvalidSpec(
            f"texts are cut at {request.max_tokens} tokens; this team's live requests may read at most "
            f"{max_prompt_tokens} a text (quota live_prompt_tokens)",
            field="max_tokens",
        )
    check()
    ctx = live_sae(request, store)  # inspect's cache: both ops share the SAE
    sinks = sink_reference(request, ctx.sink_info)
    labels, pages, label_job = {}, False, request.label_job
    if label_job:
        check()
        labels, pages = live_labels(store, label_job, ctx)
    check()
    lm = cached_model(ctx.model, device, cache_dir)
    ids = {side: _token_ids(lm, getattr(request, side), side, request.max_tokens, request.seed) for side in "ab"}
    n_tokens = sum(len(t) for texts, _, _ in ids.values() for t in texts)
    if n_tokens > MAX_TOTAL_TOKENS:
        raise InvalidSpec(
            f"the two sets are {n_tokens:,} tokens after the cut, more than a live request reads "
            f"({MAX_TOTAL_TOKENS:,}): lower max_tokens, or give fewer texts",
            field="max_tokens",
        )
    hooks = coder_input_hooks(ctx.sae, ctx.hook, ctx.layer_hooks, field="sae")  # a crosscoder reads all its layers
    acts = {}
    for side, (texts, field, _) in ids.items():
        check()
        acts[side] = text_activations(lm, ctx.sae, hooks, texts, sinks=sinks, aggregate=request.aggregate, field=field)
    check()
    higher_on_a, higher_on_b = contrast_features(
        acts["a"], acts["b"], top_k=min(request.top_k, ctx.sae.d_sae), held_out=request.held_out, seed=request.seed
    )

    def named(f: ContrastFeature) -> ContrastFeature:
        link = f"/browse#/feature/{label_job}/{f.feature}" if pages else None
        return f.model_copy(update={"label": labels.get(f.feature), "link": link})

    result = ContrastResult(
        sae=ctx.provenance,
        model=ctx.model.name,
        hook=ctx.hook,
        label_job=label_job,
        sink_rule=None if sinks is None else {"median_norm": sinks.median_norm, "norm_factor": sinks.norm_factor},
        aggregate=request.aggregate,
        n_texts={side: len(acts[side]) for side in "ab"},
        n_held_out={side: len(held_out_split(len(acts[side]), request.held_out, 0)[1]) for side in "ab"},
        n_tokens=n_tokens,
        n_cut=sum(cut for _, _, cut in ids.values()),
        higher_on_a=[named(f) for f in higher_on_a],
        higher_on_b=[named(f) for f in higher_on_b],
        seconds=time.monotonic() - t0,
    )
    return result.model_dump(mode="json")


def _token_ids(
    lm: LoadedModel, texts: TextSet, side: str, max_tokens: int, seed: int
) -> tuple[list[list[int]], str, int]:
    """(each text's token ids cut at max_tokens, the field its texts are named by, how many were cut)."""
    if texts.texts is not None:
        raw, field = list(texts.texts), f"{side}.texts"
    else:
        assert texts.corpus is not None  # TextSet's validator: one of the two
        raw, field = _documents(texts, side, seed), f"{side}.corpus"
    ids = lm.tokenizer(raw, add_special_tokens=False)["input_ids"]
    for i, t in enumerate(ids):
        if not t:
            raise InvalidSpec(f"text {i} has no tokens as the model reads it", field=f"{field}.{i}")
    return [t[:max_tokens] for t in ids], field, sum(len(t) > max_tokens for t in ids)


def _documents(texts: TextSet, side: str, seed: int) -> list[str]:
    """The extracts of the first `max_docs` documents of the topic, in the corpus's seeded order."""
    assert texts.corpus is not None
    docs = builtin_documents(texts.corpus)
    if texts.topic is not None and not any(d.topic == texts.topic for d in docs):
        known = sorted({d.topic for d in docs if d.topic})
        raise InvalidSpec(f"{texts.corpus} has no topic {texts.topic!r}; its topics are {known}", field=f"{side}.topic")
    chosen = [docs[i].text for i in builtin_order(texts.corpus, seed) if texts.topic in (None, docs[i].topic)]
    return chosen[: texts.max_docs]
