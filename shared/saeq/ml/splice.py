"""Edit a hook point's activations during a forward pass (evaluation splices, steering), and what a
sparse coder reads and replaces when it is spliced into the model.

`with splice(model, "blocks.14.hook_resid_post", edit): model(ids)` runs the model with the hook
point's output replaced by `edit(x_BTD)`. The name its callers know for `saeq.ml.hookpoints.edit`.

A `CoderSplice` is the one thing a plain SAE, a transcoder and a crosscoder differ in when they are
evaluated or read: an SAE reads a hook and replaces it with its reconstruction; a transcoder reads
its input hook and replaces its target hook (the MLP's output) with its prediction; a crosscoder
reads all its hooks, side by side token by token, and replaces each with its layer's part.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from saeq import hooks as hook_names
from saeq.ml import hookpoints
from saeq.ml.hookpoints import Edit, edit

splice = edit

_SITE_ORDER = {"resid_pre": 0, "attn_out": 1, "ln2_normalized": 2, "mlp_out": 3, "resid_post": 4}


def forward_order(hook: str) -> tuple[int, int]:
    """Sorts hook points in the order a forward pass reaches them."""
    point = hook_names.parse(hook)
    return point.block, _SITE_ORDER[point.site]


@dataclass(frozen=True)
class CoderSplice:
    """What a sparse coder reads (its input rows: these hooks' activations side by side) and what
    it replaces (its output rows, split evenly over these hooks, in order)."""

    kind: str
    """"sae", "transcoder" or "crosscoder"."""
    reads: tuple[str, ...]
    replaces: tuple[str, ...]

    @property
    def sink_hook(self) -> str:
        """The hook whose norms pick the attention sinks (as in training: the first read)."""
        return self.reads[0]

    def describe(self) -> dict[str, Any]:
        """JSON for manifests and reports."""
        return {"kind": self.kind, "reads": list(self.reads), "replaces": list(self.replaces)}

    @contextlib.contextmanager
    def capture(self, model) -> Iterator[dict[str, Tensor]]:
        """Run the model inside with every hook read and replaced recorded, unchanged."""
        seen: dict[str, Tensor] = {}
        with contextlib.ExitStack() as stack:
            for h in dict.fromkeys((*self.reads, *self.replaces)):
                stack.enter_context(hookpoints.read(model, h, lambda x, h=h: seen.__setitem__(h, x)))
            yield seen

    def input_rows(self, seen: dict[str, Tensor]) -> Tensor:
        """(B*T, d_in) float32: the read hooks' activations side by side."""
        return _rows(seen, self.reads)

    def target_rows(self, seen: dict[str, Tensor]) -> Tensor:
        """(B*T, d_out) float32: what the coder's output is measured against."""
        return _rows(seen, self.replaces)

    @contextlib.contextmanager
    def replaced(self, model, out_BTD: Tensor, keep_BT1: Tensor) -> Iterator[None]:
        """Run the model inside with the replaced hooks' activations at kept tokens taken from
        `out_BTD` (B, T, d_out), each hook its own slice; the other tokens left as they were."""
        parts = out_BTD.chunk(len(self.replaces), dim=-1) if len(self.replaces) > 1 else (out_BTD,)
        with contextlib.ExitStack() as stack:
            for h, part in zip(self.replaces, parts, strict=True):
                stack.enter_context(splice(model, h, lambda a, part=part: torch.where(keep_BT1, part.to(a.dtype), a)))
            yield

    @contextlib.contextmanager
    def zeroed(self, model, keep_BT1: Tensor) -> Iterator[None]:
        """Run the model inside with the replaced hooks zero-ablated at kept tokens."""
        with contextlib.ExitStack() as stack:
            for h in self.replaces:
                stack.enter_context(splice(model, h, lambda a: torch.where(keep_BT1, torch.zeros_like(a), a)))
            yield


class _Read(Exception):
    """Raised by a read callback once every hook needed is seen: the forward pass stops there."""


def read_inputs(model, coder_splice: CoderSplice, ids_BT: Tensor) -> tuple[Tensor, Tensor]:
    """(input rows (B*T, d_in), the sink hook's rows (B*T, d)) float32 of one forward pass, stopped
    once every read hook has fired."""
    seen: dict[str, Tensor] = {}
    wanted = coder_splice.reads

    def record(h: str, x: Tensor) -> None:
        seen[h] = x
        if all(w in seen for w in wanted):
            raise _Read

    with contextlib.ExitStack() as stack:
        for h in wanted:
            stack.enter_context(hookpoints.read(model, h, lambda x, h=h: record(h, x)))
        try:
            model(input_ids=ids_BT, use_cache=False)
        except _Read:
            pass
    missing = [h for h in wanted if h not in seen]
    if missing:
        raise RuntimeError(f"{missing} did not fire")
    return _rows(seen, wanted), _rows(seen, (coder_splice.sink_hook,))


def _rows(seen: dict[str, Tensor], names: tuple[str, ...]) -> Tensor:
    if len(names) == 1:
        x = seen[names[0]]
        return x.reshape(-1, x.shape[-1]).float()
    return torch.cat([seen[h].reshape(-1, seen[h].shape[-1]).float() for h in names], dim=-1)


__all__ = ["CoderSplice", "Edit", "forward_order", "read_inputs", "splice"]
