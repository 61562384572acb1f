"""Stop a forward pass within seconds of a cancel or a time limit, whatever batch the user chose:
forwards run on micro-batches of at most `MICRO_BATCH_TOKENS` tokens, and `should_stop` is polled
before every decoder block, attention and MLP."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from torch import nn

from saeq.errors import Cancelled
from saeq.ml.models import decoder_blocks

MICRO_BATCH_TOKENS = 8192
"""Most tokens one forward pass runs: a batch of more contexts is run in slices of whole
contexts. Contexts never see each other, so the activations are those of the whole batch."""


def micro_batches(n_contexts: int, context_len: int, max_tokens: int = MICRO_BATCH_TOKENS) -> Iterator[slice]:
    """Slices of `range(n_contexts)`, each at most `max_tokens` tokens (at least one context)."""
    step = max(1, max_tokens // context_len)
    for c0 in range(0, n_contexts, step):
        yield slice(c0, min(c0 + step, n_contexts))


@contextmanager
def stop_between_blocks(model: nn.Module, should_stop: Callable[[], bool], message: str):
    """While inside, a forward pass of `model` raises Cancelled(message) at the next block,
    attention or MLP once `should_stop()` is true. `should_stop` must be cheap (a flag, a clock):
    it runs dozens of times per forward pass."""

    def check(module, args):
        if should_stop():
            raise Cancelled(message)

    handles = [m.register_forward_pre_hook(check) for b in decoder_blocks(model) for m in (b.block, b.attn, b.mlp)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
