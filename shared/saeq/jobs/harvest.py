"""Harvest: run a corpus through a model and cut the activations at some hook points into shards.

Contexts are packed deterministically from the documents and every shard is computed in the same
batches, so shard k is always the same bytes: a resumed run only tokenises the shards it skips.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from saeq import hooks
from saeq.errors import Cancelled, InvalidSpec, OutOfMemory
from saeq.ml.corpus import Document
from saeq.ml.models import LoadedModel, decoder_blocks
from saeq.ml.placement import is_out_of_memory
from saeq.ml.sinks import SinkStats, median_norm, sink_stats
from saeq.ml.stopping import MICRO_BATCH_TOKENS, micro_batches, stop_between_blocks
from saeq.specs import HarvestSpec


@dataclass
class Shard:
    index: int
    n_tokens: int
    tensors: dict[str, dict[str, Tensor]]
    """Per hook name: acts, token_ids, doc_ids, positions, norms (layout in saeq.ml.shards)."""
    sinks: dict[str, SinkStats]
    """Per hook name: this shard's sink counts, against the run's reference median norm."""
    context_len: int

    def metadata(self, hook: str) -> dict[str, str]:
        """What a shard file records about itself (safetensors metadata is str -> str)."""
        s = self.sinks[hook]
        return {
            "hook": hook,
            "shard_index": str(self.index),
            "n_tokens": str(self.n_tokens),
            "context_len": str(self.context_len),
            "median_norm": repr(s.median_norm),
            "n_position0": str(s.n_position0),
            "n_outliers": str(s.n_outliers),
            "sink_norm_factor": repr(s.norm_factor),
        }


def harvest_activations(
    spec: HarvestSpec,
    lm: LoadedModel,
    docs: Iterable[Document],
    *,
    start_shard: int = 0,
    stop_shard: int | None = None,
    median_norms: Mapping[str, float] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_batch: Callable[[int], None] = lambda tokens_done: None,
    micro_batch_tokens: int = MICRO_BATCH_TOKENS,
) -> Iterator[Shard]:
    """Yield shards `start_shard, start_shard + 1, ...` (up to `stop_shard`, excluded, when given:
    one slice of a split harvest) of the harvest `spec` describes.

    Each shard holds `spec.shard_tokens // spec.context_len` whole contexts (the last may hold
    fewer); the run ends at `spec.max_tokens` rounded up to whole contexts, or with the corpus
    (a final incomplete context is dropped). `median_norms` (hook -> the first shard's median
    norm, as in its metadata) is the sink rule's reference; when resuming, pass the values of
    shard 0 so counts agree with an uninterrupted run. `on_batch` gets the tokens done so far,
    counting skipped shards, after each batch of `spec.batch_size` contexts. `should_stop` is
    polled between micro-batches of at most `micro_batch_tokens` and between blocks (a cheap flag:
    see saeq.ml.stopping); once true, Cancelled.
    """
    points = _check_spec(spec, lm)
    if spec.prepend_bos and lm.tokenizer.bos_token_id is None:
        raise InvalidSpec("the tokenizer has no BOS token", field="spec.prepend_bos")
    T = spec.context_len
    per_shard = spec.shard_tokens // T
    n_contexts = math.ceil(spec.max_tokens / T)
    if stop_shard is not None:  # a slice ends where the next one starts
        n_contexts = min(n_contexts, stop_shard * per_shard)
    contexts = itertools.islice(
        pack_contexts(
            docs, lm.tokenizer, context_len=T, prepend_bos=spec.prepend_bos, doc_separator=spec.doc_separator
        ),
        n_contexts,
    )
    for _ in itertools.islice(contexts, start_shard * per_shard):
        pass  # skipped shards: tokenised to find where the next one starts, never run
    medians = dict(median_norms or {})
    tokens_done = start_shard * per_shard * T
    with _Recorder(decoder_blocks(lm.model), points) as recorder:
        for index in itertools.count(start_shard):
            chunk = list(itertools.islice(contexts, per_shard))
            if not chunk:
                return
            shard = _harvest_shard(
                spec, lm, recorder, chunk, index, medians, should_stop, on_batch, tokens_done, micro_batch_tokens
            )
            tokens_done += shard.n_tokens
            yield shard


def slice_ranges(spec: HarvestSpec) -> list[range]:
    """The shard indices each of the spec's slices harvests: contiguous, disjoint, in order, their
    union the shards a single harvest writes (the last ones empty when the corpus ends first)."""
    n, k = spec.max_shards, spec.slices
    return [range(i * n // k, (i + 1) * n // k) for i in range(k)]


def _harvest_shard(
    spec, lm, recorder, chunk, index, medians, should_stop, on_batch, tokens_before: int, micro_batch_tokens: int
) -> Shard:
    C, T, D = len(chunk), spec.context_len, lm.d_model
    N = C * T
    token_ids_CT = torch.tensor([ids for ids, _ in chunk], dtype=torch.int32)
    doc_ids_N = torch.tensor([owners for _, owners in chunk], dtype=torch.int32).reshape(N)
    positions_N = torch.arange(T, dtype=torch.int32).repeat(C)
    acts = {p.name: torch.empty(N, D, dtype=getattr(torch, spec.dtype)) for p in recorder.points}
    norms = {p.name: torch.empty(N, dtype=torch.float32) for p in recorder.points}
    # Entered per shard, never across a yield: the model is cached for the worker's next job.
    with stop_between_blocks(lm.model, should_stop, "harvest cancelled"):
        for c0 in range(0, C, spec.batch_size):
            c1 = min(c0 + spec.batch_size, C)
            for micro in micro_batches(c1 - c0, T, micro_batch_tokens):
                if should_stop():
                    raise Cancelled("harvest cancelled")
                m0, m1 = c0 + micro.start, c0 + micro.stop
                rows = slice(m0 * T, m1 * T)
                ids_BT = token_ids_CT[m0:m1].to(lm.device, torch.long)
                recorder.run(lm.model, ids_BT, {h: (acts[h][rows], norms[h][rows]) for h in acts})
            on_batch(tokens_before + c1 * T)

    tensors, sinks = {}, {}
    for h in acts:
        if h not in medians:  # first shard of the run: it sets the reference
            medians[h] = median_norm(positions_N, norms[h])
        sinks[h] = sink_stats(positions_N, norms[h], medians[h], spec.sink_norm_factor)
        tensors[h] = {
            "acts": acts[h],
            "token_ids": token_ids_CT.reshape(N),
            "doc_ids": doc_ids_N,
            "positions": positions_N,
            "norms": norms[h],
        }
    return Shard(index, N, tensors, sinks, T)


def _check_spec(spec: HarvestSpec, lm: LoadedModel) -> list[hooks.HookPoint]:
    """The spec's hook points, once checked against the model the spec could not see."""
    max_len = getattr(lm.model.config, "max_position_embeddings", None)
    if max_len is not None and spec.context_len > max_len:
        raise InvalidSpec(
            f"context_len {spec.context_len} exceeds the model's {max_len} positions", field="spec.context_len"
        )
    points = [hooks.parse(name) for name in spec.hooks]
    for j, p in enumerate(points):
        if p.block >= lm.n_layers:
            raise InvalidSpec(
                f"{p.name} asks for block {p.block}, but {lm.provenance.get('name')} "
                f"has {lm.n_layers} blocks (0..{lm.n_layers - 1})",
                field=f"spec.hooks[{j}]",
            )
    return points


def pack_contexts(
    docs: Iterable[Document],
    tokenizer,
    *,
    context_len: int,
    prepend_bos: bool,
    doc_separator: str,
    docs_per_call: int = 64,
) -> Iterator[tuple[list[int], list[int]]]:
    """(token_ids, doc_ids) of each context: documents tokenised without special tokens, joined by
    the tokenised separator and cut into `context_len` tokens, BOS first when asked. Packed
    tokens (BOS, separator) get doc id -1."""
    bos = [tokenizer.bos_token_id] if prepend_bos else []
    body = context_len - len(bos)
    sep = tokenizer(doc_separator, add_special_tokens=False)["input_ids"] if doc_separator else []
    ids: list[int] = []  # token stream not yet cut into contexts
    owners: list[int] = []  # doc id of each token in `ids`
    docs = iter(docs)
    while batch := list(itertools.islice(docs, docs_per_call)):
        encoded = tokenizer([d.text for d in batch], add_special_tokens=False, verbose=False)["input_ids"]
        for doc, toks in zip(batch, encoded, strict=False):
            if owners:  # separator between documents, not before the first
                ids += sep
                owners += [-1] * len(sep)
            ids += toks
            owners += [doc.doc_id] * len(toks)
        n_full = len(ids) // body
        for k in range(0, n_full * body, body):
            yield bos + ids[k : k + body], [-1] * len(bos) + owners[k : k + body]
        del ids[: n_full * body], owners[: n_full * body]


def context_batches(
    docs: Iterable[Document], tokenizer, *, context_len: int, max_tokens: int, batch_size: int
) -> Iterator[tuple[Tensor, Tensor]]:
    """(token ids (B, T), doc ids (B, T)) batches of packed contexts (no BOS, documents joined by a
    blank line) until `max_tokens`, rounded up to whole contexts: what evaluation and labelling read."""
    contexts = itertools.islice(
        pack_contexts(docs, tokenizer, context_len=context_len, prepend_bos=False, doc_separator="\n\n"),
        math.ceil(max_tokens / context_len),
    )
    while chunk := list(itertools.islice(contexts, batch_size)):
        yield torch.tensor([ids for ids, _ in chunk]), torch.tensor([owners for _, owners in chunk])


class _StopForward(Exception):
    """Raised by the deepest hook: nothing after it (later blocks, the LM head) is computed."""


class _Recorder:
    """Forward hooks that copy each hook point's output into the current batch's shard rows and
    stop the forward pass as soon as the last of them has fired."""

    def __init__(self, blocks, points: list[hooks.HookPoint]):
        self.points = points
        # Hook points still to fire in this batch: name -> (acts (B*T, D), norms (B*T,)) rows.
        self.dest: dict[str, tuple[Tensor, Tensor]] = {}
        self.handles = []
        for p in points:
            b = blocks[p.block]
            if p.site == "resid_pre":  # the stream entering the block: its first input
                self.handles.append(b.block.register_forward_pre_hook(partial(self._pre, p.name), with_kwargs=True))
            elif p.site == "ln2_normalized":  # the MLP's input
                self.handles.append(b.mlp.register_forward_pre_hook(partial(self._mlp_in, p.name)))
            else:
                module = {"resid_post": b.block, "attn_out": b.attn, "mlp_out": b.mlp}[p.site]
                self.handles.append(module.register_forward_hook(partial(self._post, p.name)))

    def _pre(self, name, module, args, kwargs):
        self._record(name, args[0] if args else kwargs["hidden_states"])

    def _mlp_in(self, name, module, args):
        self._record(name, args[0])

    def _post(self, name, module, args, output):
        # Attention modules return (output, weights); some blocks return tuples too.
        self._record(name, output[0] if isinstance(output, tuple) else output)

    def _record(self, name: str, x_BTD: Tensor) -> None:
        if name not in self.dest:  # the model is run by someone else between our batches
            return
        acts_ND, norms_N = self.dest.pop(name)
        acts_ND.copy_(x_BTD.reshape(acts_ND.shape))  # casts to the stored dtype
        norms_N.copy_(torch.linalg.vector_norm(x_BTD.float(), dim=-1).reshape(-1))
        if not self.dest:
            raise _StopForward

    def run(self, model, ids_BT: Tensor, dest: dict[str, tuple[Tensor, Tensor]]) -> None:
        self.dest = dict(dest)
        try:
            with torch.inference_mode():
                model(input_ids=ids_BT, use_cache=False)
        except _StopForward:
            return
        except (MemoryError, RuntimeError) as e:  # torch's OutOfMemoryError is a RuntimeError
            if not is_out_of_memory(e):  # the CPU allocator's failure is a plain RuntimeError
                raise
            raise OutOfMemory(
                f"out of memory running {ids_BT.shape[0]} contexts of {ids_BT.shape[1]} tokens; lower batch_size",
                field="spec.batch_size",
            ) from e
        finally:
            self.dest = {}
        raise RuntimeError(
            f"hooks {sorted(dest)} did not all fire: the model does not run its blocks the way saeq expects"
        )

    def __enter__(self) -> _Recorder:
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()
