"""Evaluate an SAE, a transcoder or a crosscoder: reconstruction, sparsity and the model's loss with
it spliced in (saeq.jobs.evaluate_batch: one accounting, the coder's kind only says what is spliced).

Definitions follow SAELens (`sae_lens.evals`) and SAEBench; `METRICS_VERSION` names this set and
docs/metrics.md writes each one down. Attention sinks (saeq.ml.sinks) are left out of every average
and stay clean (unreconstructed, unablated) in the splices; the count left out is reported.
The pass hands out its running sums every `chunk_batches` batches (EvalProgress), and takes them
back to resume: the sums go on from exactly where they were, so the metrics are bit-identical.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor

from saeq.errors import Cancelled, InvalidSpec
from saeq.jobs.evaluate_batch import coder_splice, evaluate_batch
from saeq.jobs.evaluate_intervals import GROUP_COLUMNS, MAX_GROUPS, layer_fvu_intervals, merge_adjacent
from saeq.jobs.evaluate_result import L0_BINS, LOG_DENSITY_BINS, EvalResult, finish, layer_fvus
from saeq.ml.models import LoadedModel
from saeq.ml.sae import SparseAutoencoder
from saeq.ml.sinks import SinkReference
from saeq.ml.splice import CoderSplice
from saeq.ml.stopping import micro_batches, stop_between_blocks

METRICS_VERSION = "saeq.metrics/1"
__all__ = ["L0_BINS", "LOG_DENSITY_BINS", "METRICS_VERSION", "EvalProgress", "EvalResult", "evaluate_sae"]


class _Stats:
    """Running sums over ordinary tokens, in float64 (the variance is a small difference of
    large numbers on this residual stream)."""

    def __init__(self, d_in: int, d_sae: int, T: int, n_layers: int = 1):
        # d_in: the width of what the output stands in for (a transcoder's target, a crosscoder's
        # layers side by side), n_layers the hooks it spans.
        self.n = 0
        self.sum_x = torch.zeros(d_in, dtype=torch.float64)
        self.sum_sq_x = 0.0
        self.sum_sq_resid = 0.0
        self.sum_cos = 0.0
        self.sum_l0 = 0.0
        self.sum_l1 = 0.0
        self.fires = torch.zeros(d_sae, dtype=torch.float64)
        self.l0_all: list[Tensor] = []
        self.pos_n = torch.zeros(T, dtype=torch.float64)
        self.pos_sum_x = torch.zeros(T, d_in, dtype=torch.float64)
        self.pos_sq_x = torch.zeros(T, dtype=torch.float64)
        self.pos_sq_resid = torch.zeros(T, dtype=torch.float64)
        self.layer_sq_x = torch.zeros(n_layers, dtype=torch.float64)
        self.layer_sq_resid = torch.zeros(n_layers, dtype=torch.float64)
        self.group_layer_sums = torch.zeros(0, 2 * n_layers, dtype=torch.float64)
        self.ce = {"clean": 0.0, "sae": 0.0, "zero": 0.0}
        self.kl = {"sae": 0.0, "zero": 0.0}
        self.n_loss = 0
        # The same sums per context (per block of adjacent ones past MAX_GROUPS), for the intervals.
        self.n_contexts = 0
        self.contexts_per_group = 1
        self.group_sums = torch.zeros(0, len(GROUP_COLUMNS), dtype=torch.float64)
        self.group_sum_x = torch.zeros(0, d_in, dtype=torch.float64)

    def add_contexts(self, sums_BK: Tensor, sum_x_BD: Tensor, layer_sums_B2L: Tensor | None = None) -> None:
        """Add the sums of the next B contexts, each to its group (context index // contexts_per_group);
        `layer_sums_B2L`: a crosscoder's per-layer sum of ||x_l||^2, then of ||x_l - x_hat_l||^2."""
        B = sums_BK.shape[0]
        while (self.n_contexts + B - 1) // self.contexts_per_group >= MAX_GROUPS:
            self.group_sums, self.group_sum_x = merge_adjacent(self.group_sums), merge_adjacent(self.group_sum_x)
            self.group_layer_sums = merge_adjacent(self.group_layer_sums)
            self.contexts_per_group *= 2
        group_B = (self.n_contexts + torch.arange(B)) // self.contexts_per_group
        grow = int(group_B[-1]) + 1 - self.group_sums.shape[0]
        if grow > 0:
            self.group_sums = torch.cat([self.group_sums, self.group_sums.new_zeros(grow, len(GROUP_COLUMNS))])
            self.group_sum_x = torch.cat([self.group_sum_x, self.group_sum_x.new_zeros(grow, self.sum_x.shape[0])])
            layers = self.group_layer_sums
            self.group_layer_sums = torch.cat([layers, layers.new_zeros(grow, layers.shape[1])])
        self.group_sums.index_add_(0, group_B, sums_BK.cpu())
        self.group_sum_x.index_add_(0, group_B, sum_x_BD.cpu())
        if layer_sums_B2L is not None:
            self.group_layer_sums.index_add_(0, group_B, layer_sums_B2L.cpu())
        self.n_contexts += B


_SCALARS = (
    *("n", "sum_sq_x", "sum_sq_resid", "sum_cos", "sum_l0", "sum_l1", "ce", "kl", "n_loss"),
    *("n_contexts", "contexts_per_group"),
)
_TENSORS = ("sum_x", "fires", "pos_n", "pos_sum_x", "pos_sq_x", "pos_sq_resid", "layer_sq_x", "layer_sq_resid")
_GROUP_TENSORS = ("group_sums", "group_sum_x", "group_layer_sums")  # (G, ...): G grows with the contexts summed


@dataclass
class EvalProgress:
    """How far a metric pass got: the first `batches` batches of contexts (`tokens` tokens, of
    which `n_sinks` were sinks left out) and the running sums over them."""

    batches: int
    tokens: int
    n_sinks: int
    stats: _Stats

    def to_bytes(self, metadata: dict[str, str]) -> bytes:
        """safetensors: the sums' tensors, the scalars in the metadata (floats by repr, which reads
        back exactly) beside the caller's `metadata`."""
        s = self.stats
        tensors = {name: getattr(s, name).contiguous() for name in (*_TENSORS, *_GROUP_TENSORS)}
        tensors["l0_all"] = torch.cat(s.l0_all) if s.l0_all else torch.zeros(0, dtype=torch.long)
        scalars = {name: getattr(s, name) for name in _SCALARS}
        progress = {"batches": self.batches, "tokens": self.tokens, "n_sinks": self.n_sinks}
        return save_tensors(tensors, {**metadata, "scalars": json.dumps(scalars), "progress": json.dumps(progress)})

    @classmethod
    def from_bytes(cls, data: bytes) -> tuple[EvalProgress, dict[str, str]]:
        """-> the progress and the metadata it was stored with. Raises ValueError when `data` is
        not one (torn, or another object)."""
        try:
            (header_len,) = struct.unpack("<Q", data[:8])
            metadata: dict[str, str] = json.loads(data[8 : 8 + header_len]).get("__metadata__", {})
            tensors = load_tensors(data)
            scalars, progress = json.loads(metadata["scalars"]), json.loads(metadata["progress"])
            d_in, d_sae, T = tensors["sum_x"].shape[0], tensors["fires"].shape[0], tensors["pos_n"].shape[0]
            stats = _Stats(d_in, d_sae, T, tensors["layer_sq_x"].shape[0])
            for name in _TENSORS:
                if tensors[name].shape != getattr(stats, name).shape:
                    raise ValueError(f"{name} has shape {tuple(tensors[name].shape)}")
                setattr(stats, name, tensors[name].clone())
            for name in _GROUP_TENSORS:
                if tensors[name].shape[1:] != getattr(stats, name).shape[1:]:
                    raise ValueError(f"{name} has shape {tuple(tensors[name].shape)}")
                setattr(stats, name, tensors[name].clone())
            for name in _SCALARS:
                setattr(stats, name, scalars[name])
            stats.l0_all = [tensors["l0_all"].clone()]
            made = cls(int(progress["batches"]), int(progress["tokens"]), int(progress["n_sinks"]), stats)
        except (struct.error, KeyError, TypeError, ValueError, RuntimeError) as e:
            raise ValueError(f"not an evaluation's progress: {e}") from e
        return made, {k: v for k, v in metadata.items() if k not in ("scalars", "progress")}


def evaluate_sae(
    sae: SparseAutoencoder,
    lm: LoadedModel,
    hook: str,
    contexts: Iterable[Tensor],
    *,
    sinks: SinkReference | None,
    dense_threshold: float = 0.1,
    should_stop: Callable[[], bool] = lambda: False,
    on_batch: Callable[[int], None] = lambda tokens_done: None,
    chunk_batches: int = 0,
    on_chunk: Callable[[EvalProgress], None] = lambda progress: None,
    resume: EvalProgress | None = None,
    target_hook: str | None = None,
    layer_hooks: Sequence[str] | None = None,
) -> EvalResult:
    """Metrics of `sae` at `hook` over batches of contexts (B, T) token ids. A transcoder reads
    `hook` and replaces `target_hook`; a crosscoder reads and replaces `layer_hooks` (`hook` their
    first); an SAE reads and replaces `hook` (saeq.jobs.evaluate_batch.coder_splice). `sinks` None
    keeps every token (for comparisons with tools that have no sink rule). Every `chunk_batches`
    batches (0: never) `on_chunk` sees the progress so far (to serialise at once: the sums go on
    changing); `resume`, such a progress of an earlier attempt over the same `contexts`, is taken
    as the first batches' result (they are read, not computed), unless its dims are not this SAE's."""
    cs = coder_splice(sae, lm, hook, target_hook=target_hook, layer_hooks=layer_hooks)
    return _evaluate(
        sae, lm, cs, contexts, sinks, dense_threshold, should_stop, on_batch, chunk_batches, on_chunk, resume
    )


def _evaluate(
    sae: SparseAutoencoder,
    lm: LoadedModel,
    cs: CoderSplice,
    contexts: Iterable[Tensor],
    sinks: SinkReference | None,
    dense_threshold: float,
    should_stop: Callable[[], bool],
    on_batch: Callable[[int], None],
    chunk_batches: int,
    on_chunk: Callable[[EvalProgress], None],
    resume: EvalProgress | None,
) -> EvalResult:
    device = lm.device
    sae = sae.to(device).eval()
    d_target, n_layers = lm.d_model * len(cs.replaces), len(cs.replaces)
    stats, done, n_sinks, skip = None, 0, 0, 0
    dims = (d_target, sae.d_sae, n_layers)
    if resume is not None and (*_dims(resume.stats),) == dims:
        stats, done, n_sinks, skip = resume.stats, resume.tokens, resume.n_sinks, resume.batches
    # Micro-batches and checks between blocks: a cancel acts within seconds whatever batch_size is.
    with stop_between_blocks(lm.model, should_stop, "evaluation cancelled"):
        for i, ids_BT in enumerate(contexts):
            if i < skip:
                continue  # summed by an earlier attempt
            ids_BT = ids_BT.to(device, torch.long)
            B, T = ids_BT.shape
            stats = stats or _Stats(d_target, sae.d_sae, T, n_layers)
            if stats.pos_n.shape[0] != T:
                raise InvalidSpec(f"contexts of {T} tokens after ones of {stats.pos_n.shape[0]}", field="spec")
            for micro in micro_batches(B, T):
                if should_stop():
                    raise Cancelled("evaluation cancelled")
                n_sinks += evaluate_batch(sae, lm, cs, ids_BT[micro], sinks, stats)
            done += B * T
            on_batch(done)
            if chunk_batches and (i + 1) % chunk_batches == 0:
                on_chunk(EvalProgress(i + 1, done, n_sinks, stats))
    if stats is None or stats.n == 0:
        raise InvalidSpec("no ordinary tokens to evaluate on", field="spec.corpus")
    result = finish(stats, n_sinks, done, dense_threshold)
    result.splice = cs.describe()
    if n_layers > 1:
        result.fvu_per_layer = layer_fvus(stats)
        result.fvu_per_layer_intervals = layer_fvu_intervals(
            stats.group_sums.numpy(),
            stats.group_sum_x.numpy(),
            stats.group_layer_sums.numpy(),
            result.fvu_per_layer,
            contexts_per_group=stats.contexts_per_group,
        )
    return result


def _dims(s: _Stats) -> tuple[int, int, int]:
    return s.sum_x.shape[0], s.fires.shape[0], s.layer_sq_x.shape[0]
