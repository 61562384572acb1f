"""The feature index: every latent's activations over held-out contexts, from one pass, stored sparse.

Labelling, evaluation, steering and the browser read it: density and maximum activation per
feature, top-activating windows with per-token activations, windows sampled from activation
quantiles, and random windows where the feature is silent. Attention sinks (saeq.ml.sinks) are
kept in the windows' text but carry no activation. A coder's input is what it encodes: a
transcoder's input hook, a crosscoder's hooks read together in one pass (`coder_input_hooks`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import Tensor

from saeq.errors import Cancelled, InvalidSpec
from saeq.ml import hookpoints
from saeq.ml.models import LoadedModel
from saeq.ml.sae import SparseAutoencoder, stable_order
from saeq.ml.sinks import SinkReference, sink_mask
from saeq.ml.stopping import micro_batches, stop_between_blocks

INDEX_FORMAT = "saeq.feature-index/1"


@dataclass(frozen=True)
class Example:
    """A window of a context with one feature's activation on each token."""

    context: int
    start: int
    """Position of the window's first token in its context."""
    token_ids: list[int]
    acts: list[float]
    doc_id: int
    """Document of the window's most active token (-1: separator or BOS)."""

    @property
    def max_act(self) -> float:
        return max(self.acts, default=0.0)


@dataclass
class FeatureIndex:
    """Sparse activations of an SAE's features over C contexts of T tokens.

    Non-zeros are grouped by feature (CSR): feature f's entries are
    `[feature_ptr[f], feature_ptr[f+1])` of `flat_pos` (c * T + t) and `values`.
    """

    token_ids_CT: Tensor  # (C, T) int32
    doc_ids_CT: Tensor  # (C, T) int32, -1 for BOS and separators
    sinks_CT: Tensor  # (C, T) bool
    feature_ptr: Tensor  # (d_sae + 1,) int64
    flat_pos: Tensor  # (nnz,) int32
    values: Tensor  # (nnz,) float32

    @property
    def d_sae(self) -> int:
        return self.feature_ptr.numel() - 1

    @property
    def n_ordinary(self) -> int:
        return int((~self.sinks_CT).sum())

    def density(self) -> Tensor:
        """(d_sae,) fraction of ordinary tokens on which each feature fires."""
        return (self.feature_ptr[1:] - self.feature_ptr[:-1]).float() / max(self.n_ordinary, 1)

    def max_act(self) -> Tensor:
        """(d_sae,) largest activation of each feature (0 when it never fires)."""
        out = torch.zeros(self.d_sae)
        if self.values.numel():
            feature_of = torch.repeat_interleave(torch.arange(self.d_sae), self.feature_ptr.diff())
            out.scatter_reduce_(0, feature_of, self.values, "amax")
        return out

    def activations(self, feature: int) -> tuple[Tensor, Tensor]:
        """(flat positions, values) where `feature` fires."""
        if not 0 <= feature < self.d_sae:
            raise IndexError(f"feature {feature} is not in 0..{self.d_sae - 1}")
        lo, hi = int(self.feature_ptr[feature]), int(self.feature_ptr[feature + 1])
        return self.flat_pos[lo:hi].long(), self.values[lo:hi]

    def context_maxima(self, feature: int) -> Tensor:
        """(C,) the feature's largest activation in each context (0 where silent)."""
        pos, vals = self.activations(feature)
        T = self.token_ids_CT.shape[1]
        out = torch.zeros(self.token_ids_CT.shape[0])
        return out.scatter_reduce_(0, pos // T, vals, "amax")

    def window(self, feature: int, context: int, centre: int, *, before: int, after: int) -> Example:
        """The tokens from `centre - before` to `centre + after` of `context`, clipped."""
        T = self.token_ids_CT.shape[1]
        start, stop = max(0, centre - before), min(T, centre + after + 1)
        pos, vals = self.activations(feature)
        acts = torch.zeros(T)
        here = (pos // T) == context
        acts[pos[here] % T] = vals[here]
        acts = acts[start:stop]
        peak = start + int(acts.argmax()) if acts.numel() else centre
        return Example(
            context,
            start,
            self.token_ids_CT[context, start:stop].tolist(),
            acts.tolist(),
            int(self.doc_ids_CT[context, peak]),
        )

    def top_examples(self, feature: int, n: int, *, before: int, after: int) -> list[Example]:
        """Windows around the peaks of the `n` contexts where the feature is strongest."""
        maxima = self.context_maxima(feature)
        order = maxima.argsort(descending=True)[:n]
        return [self._peak_window(feature, int(c), before, after) for c in order if maxima[c] > 0]

    def quantile_examples(
        self,
        feature: int,
        n_per_bin: int,
        n_bins: int,
        *,
        before: int,
        after: int,
        exclude: set[int],
        generator: torch.Generator,
    ) -> list[list[Example]]:
        """For each of `n_bins` equal-count bins of the activating contexts' maxima (lowest
        first), up to `n_per_bin` windows from contexts not in `exclude`."""
        maxima = self.context_maxima(feature)
        active = [c for c in maxima.argsort().tolist() if maxima[c] > 0 and c not in exclude]
        bins = []
        for b in range(n_bins):
            members = active[b * len(active) // n_bins : (b + 1) * len(active) // n_bins]
            pick = torch.randperm(len(members), generator=generator)[:n_per_bin].tolist()
            bins.append([self._peak_window(feature, members[i], before, after) for i in pick])
        return bins

    def silent_examples(self, feature: int, n: int, *, length: int, generator: torch.Generator) -> list[Example]:
        """Random windows of `length` tokens in which the feature never fires (at most one per
        context; a feature that fires in every context still has silent stretches)."""
        pos, _ = self.activations(feature)
        C, T = self.token_ids_CT.shape
        length = min(length, T - 1)
        fired = torch.zeros(C * T)
        fired[pos] = 1
        # fired tokens in window [s, s + length) of each context, for s in 1..T-length (not 0: a sink)
        csum = torch.nn.functional.pad(fired.view(C, T).cumsum(1), (1, 0))
        quiet = (csum[:, length + 1 :] - csum[:, 1 : T - length + 1]) == 0  # (C, T - length)
        contexts = quiet.any(1).nonzero()[:, 0]
        chosen = contexts[torch.randperm(contexts.numel(), generator=generator)[:n]].tolist()
        out = []
        for c in chosen:
            starts = quiet[c].nonzero()[:, 0] + 1
            s = int(starts[torch.randint(starts.numel(), (1,), generator=generator)])
            out.append(self.window(feature, c, s, before=0, after=length - 1))
        return out

    def _peak_window(self, feature: int, context: int, before: int, after: int) -> Example:
        pos, vals = self.activations(feature)
        T = self.token_ids_CT.shape[1]
        here = (pos // T) == context
        centre = int(pos[here][vals[here].argmax()] % T)
        return self.window(feature, context, centre, before=before, after=after)

    @classmethod
    def from_dense(cls, token_ids_CT: Tensor, doc_ids_CT: Tensor, sinks_CT: Tensor, acts_CTS: Tensor) -> FeatureIndex:
        """An index of dense activations (C, T, d_sae); sink positions are zeroed."""
        C, T, S = acts_CTS.shape
        acts_NS = acts_CTS.reshape(C * T, S).clone()
        acts_NS[sinks_CT.reshape(-1)] = 0
        rows, feats = acts_NS.nonzero(as_tuple=True)
        return _assemble(
            [token_ids_CT], [doc_ids_CT], [sinks_CT], [rows.to(torch.int32)], [feats], [acts_NS[rows, feats].float()], S
        )

    # --- storage ----------------------------------------------------------------------------

    def to_bytes(self, metadata: dict[str, str]) -> bytes:
        tensors = {
            "token_ids": self.token_ids_CT,
            "doc_ids": self.doc_ids_CT,
            "sinks": self.sinks_CT.to(torch.uint8),
            "feature_ptr": self.feature_ptr,
            "flat_pos": self.flat_pos,
            "values": self.values,
        }
        return save_safetensors(
            {k: v.contiguous() for k, v in tensors.items()}, metadata={"format": INDEX_FORMAT, **metadata}
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> FeatureIndex:
        t = load_safetensors(data)
        return cls(t["token_ids"], t["doc_ids"], t["sinks"].bool(), t["feature_ptr"], t["flat_pos"], t["values"])


class _Captured(Exception):
    """Stops the forward pass once the hook point has been read: later blocks are not needed."""


def coder_input_hooks(
    sae: SparseAutoencoder, hook: str, layer_hooks: Sequence[str] | None = None, *, field: str = "spec.sae"
) -> tuple[str, ...]:
    """The hooks whose activations, side by side in this order, `sae` encodes: a crosscoder's
    `layer_hooks` (all of them, as it was trained), else `hook` (a transcoder's input hook)."""
    n_layers = getattr(sae, "n_layers", None)
    if n_layers is None:
        return (hook,)
    if not layer_hooks or len(layer_hooks) != n_layers:
        raise InvalidSpec(
            f"the crosscoder reads {n_layers} hooks and its train job names {len(layer_hooks or ())}: "
            "use a crosscoder trained by a train job (activations.hooks)",
            field=field,
        )
    return tuple(layer_hooks)


def check_input_width(sae: SparseAutoencoder, lm: LoadedModel, hooks: Sequence[str], *, field: str) -> None:
    if sae.d_in != lm.d_model * len(hooks):
        raise InvalidSpec(
            f"the SAE reads d_in={sae.d_in} but {', '.join(hooks)} give {len(hooks)} x d_model={lm.d_model}",
            field=field,
        )


def build_feature_index(
    sae: SparseAutoencoder,
    lm: LoadedModel,
    hook: str | Sequence[str],
    contexts: Iterable[tuple[Tensor, Tensor]],
    *,
    sinks: SinkReference | None,
    should_stop: Callable[[], bool] = lambda: False,
    on_batch: Callable[[int], None] = lambda tokens_done: None,
) -> FeatureIndex:
    """One pass over batches of (token ids (B, T), doc ids (B, T)): the SAE's activations at
    `hook` (or at several hooks read together, a crosscoder's), sinks zeroed (by the first hook's
    norms, as training took them), gathered into a FeatureIndex."""
    hooks = (hook,) if isinstance(hook, str) else tuple(hook)
    check_input_width(sae, lm, hooks, field="spec.sae")
    sae = sae.to(lm.device).eval()
    ids_parts, doc_parts, sink_parts, pos_parts, feat_parts, val_parts = [], [], [], [], [], []
    offset = 0
    # Micro-batches and checks between blocks: a cancel acts within seconds whatever batch_size is.
    with stop_between_blocks(lm.model, should_stop, "labelling cancelled"):
        for ids_BT, docs_BT in contexts:
            for micro in micro_batches(*ids_BT.shape):
                if should_stop():
                    raise Cancelled("labelling cancelled")
                B, T = ids_BT[micro].shape
                with torch.inference_mode():
                    pos_N, feats_N, vals_N, sink_N = _encode_batch(sae, lm, hooks, ids_BT[micro], sinks)
                pos_parts.append(pos_N + offset)
                feat_parts.append(feats_N)
                val_parts.append(vals_N)
                ids_parts.append(ids_BT[micro].to(torch.int32).cpu())
                doc_parts.append(docs_BT[micro].to(torch.int32).cpu())
                sink_parts.append(sink_N.reshape(B, T))
                offset += B * T
            on_batch(offset)
    if not ids_parts:
        raise InvalidSpec("the corpus gave no contexts to index", field="spec.corpus")
    return _assemble(ids_parts, doc_parts, sink_parts, pos_parts, feat_parts, val_parts, sae.d_sae)


def _assemble(ids_parts, doc_parts, sink_parts, pos_parts, feat_parts, val_parts, d_sae: int) -> FeatureIndex:
    """Concatenate batches and group the non-zeros by feature."""
    feats = torch.cat(feat_parts)
    order = stable_order(feats, d_sae)
    ptr = torch.zeros(d_sae + 1, dtype=torch.int64)
    ptr[1:] = torch.bincount(feats, minlength=d_sae).cumsum(0)
    return FeatureIndex(
        torch.cat(ids_parts).to(torch.int32),
        torch.cat(doc_parts).to(torch.int32),
        torch.cat(sink_parts).bool(),
        ptr,
        torch.cat(pos_parts).to(torch.int32)[order],
        torch.cat(val_parts)[order],
    )


def _encode_batch(sae, lm, hooks, ids_BT, sinks) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Non-zero activations of one batch: (flat positions, features, values) and the sink mask,
    on the CPU."""
    B, T = ids_BT.shape
    x_ND = read_hooks(lm, hooks, ids_BT.to(lm.device, torch.long))  # (N, L * d)
    positions_N = torch.arange(T, device=x_ND.device).repeat(B)
    sink_N = (
        torch.zeros(B * T, dtype=torch.bool, device=x_ND.device)
        if sinks is None
        else sink_mask(positions_N, first_hook_norms(x_ND, len(hooks)), sinks.median_norm, sinks.norm_factor)
    )
    acts_NS = sae.encode(x_ND)
    acts_NS[sink_N] = 0
    rows, feats = acts_NS.nonzero(as_tuple=True)
    return (rows.to(torch.int32).cpu(), feats.cpu(), acts_NS[rows, feats].float().cpu(), sink_N.cpu())


def read_hook(lm: LoadedModel, hook: str, ids_BT: Tensor) -> Tensor:
    """(B*T, d) activations at `hook`, float32; the forward pass stops there."""
    return read_hooks(lm, (hook,), ids_BT)


def read_hooks(lm: LoadedModel, hooks: Sequence[str], ids_BT: Tensor) -> Tensor:
    """(B*T, L*d) activations at `hooks` side by side in their order, float32, from one forward
    pass that stops once the last of them has fired."""
    captured: dict[str, Tensor] = {}

    def capture(hook: str, x: Tensor) -> None:
        captured[hook] = x
        if len(captured) == len(set(hooks)):
            raise _Captured

    with contextlib.ExitStack() as stack:
        for h in dict.fromkeys(hooks):
            stack.enter_context(hookpoints.read(lm.model, h, lambda x, h=h: capture(h, x)))
        try:
            lm.model(input_ids=ids_BT, use_cache=False)
        except _Captured:
            pass
    missing = [h for h in hooks if h not in captured]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} did not fire")
    return torch.cat([captured[h].reshape(-1, captured[h].shape[-1]).float() for h in hooks], dim=1)


def first_hook_norms(x_ND: Tensor, n_hooks: int) -> Tensor:
    """(N,) norms of the first hook's part of rows read at `n_hooks` hooks: the sink rule's."""
    return x_ND[:, : x_ND.shape[1] // n_hooks].norm(dim=-1)
