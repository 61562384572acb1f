"""Read or edit a hook point's activations during a forward pass: the one way saeq touches them.

    with hookpoints.read(model, "blocks.14.hook_resid_post", record): model(ids)   # record(x_BTD)
    with hookpoints.edit(model, "blocks.14.hook_resid_post", edit): model(ids)     # x_BTD -> edit(x_BTD)

`resid_pre` is the first input of block i, `resid_post` its output, `attn_out` / `mlp_out` the
outputs of its attention and MLP, `ln2.hook_normalized` its MLP's input (saeq.hooks names them). A `read` callback may raise to stop the
forward pass early (harvests stop after their deepest hook point).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from saeq import hooks
from saeq.ml.models import decoder_blocks

Edit = Callable[[Tensor], Tensor]
"""(B, T, D) activations -> (B, T, D) activations put in their place."""
Read = Callable[[Tensor], None]
"""Sees the (B, T, D) activations; returns nothing."""


@contextlib.contextmanager
def edit(model: nn.Module, hook: str, fn: Edit) -> Iterator[None]:
    """Run the model with the hook point's activations replaced by `fn(x_BTD)`."""
    handle = _attach(model, hook, fn, replace=True)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def read(model: nn.Module, hook: str, fn: Read) -> Iterator[None]:
    """Run the model with `fn(x_BTD)` called on the hook point's activations, left unchanged."""
    handle = _attach(model, hook, fn, replace=False)
    try:
        yield
    finally:
        handle.remove()


def _attach(model: nn.Module, hook: str, fn: Callable[[Tensor], Tensor | None], *, replace: bool) -> RemovableHandle:
    point = hooks.parse(hook)
    blocks = decoder_blocks(model)
    if point.block >= len(blocks):
        raise ValueError(f"{hook}: the model has {len(blocks)} blocks")
    b = blocks[point.block]
    if point.site == "ln2_normalized":  # the MLP's input: the normed stream after attention
        return b.mlp.register_forward_pre_hook(lambda module, args: (fn(args[0]),) if replace else fn(args[0]))
    if point.site == "resid_pre":  # the stream entering the block: its first input

        def pre(module, args, kwargs):
            if args:
                x = fn(args[0])
                return ((x, *args[1:]), kwargs) if replace else None
            x = fn(kwargs["hidden_states"])
            return (args, {**kwargs, "hidden_states": x}) if replace else None

        return b.block.register_forward_pre_hook(pre, with_kwargs=True)
    module = {"resid_post": b.block, "attn_out": b.attn, "mlp_out": b.mlp}[point.site]

    def post(module, args, output):
        if isinstance(output, tuple):  # (hidden, attention weights, ...)
            x = fn(output[0])
            return (x, *output[1:]) if replace else None
        x = fn(output)
        return x if replace else None

    return module.register_forward_hook(post)
