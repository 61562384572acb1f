"""Edit a hook point's activations during a forward pass (evaluation splices, steering).

`with splice(model, "blocks.14.hook_resid_post", edit): model(ids)` runs the model with the hook
point's output replaced by `edit(x_BTD)`. One mechanism for every job that changes activations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from torch import Tensor, nn

from saeq import hooks
from saeq.ml.models import decoder_blocks

Edit = Callable[[Tensor], Tensor]


@contextlib.contextmanager
def splice(model: nn.Module, hook: str, edit: Edit) -> Iterator[None]:
    point = hooks.parse(hook)
    blocks = decoder_blocks(model)
    if point.block >= len(blocks):
        raise ValueError(f"{hook}: the model has {len(blocks)} blocks")
    b = blocks[point.block]
    if point.site == "resid_pre":

        def pre(module, args, kwargs):
            if args:
                return (edit(args[0]), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": edit(kwargs["hidden_states"])}

        handle = b.block.register_forward_pre_hook(pre, with_kwargs=True)
    else:
        module = {"resid_post": b.block, "attn_out": b.attn, "mlp_out": b.mlp}[point.site]

        def post(module, args, output):
            if isinstance(output, tuple):  # (hidden, attention weights, ...)
                return (edit(output[0]), *output[1:])
            return edit(output)

        handle = module.register_forward_hook(post)
    try:
        yield
    finally:
        handle.remove()
