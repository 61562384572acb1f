"""A synthetic harvest (`source: synthetic`): shards of tokens drawn from a generator with known
features, in the layout a model's harvest writes, so train jobs read them unchanged.

The tokens have no contexts: every row stands alone (the manifest's context_len is 1), its
position is -1, so the sink rule's position-0 part never fires; its norm part applies as to any
harvest (norm > sink_norm_factor x shard 0's median norm), and its counts are recorded."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import torch

from saeq.errors import Cancelled
from saeq.jobs.harvest import Shard
from saeq.ml.sinks import median_norm, sink_stats
from saeq.ml.synthetic import SyntheticModel
from saeq.ml.synthetic_truth import shard_acts
from saeq.specs import HarvestSpec

NO_POSITION = -1
"""The `positions` of a synthetic token: it sits in no context."""


def synthetic_shards(
    spec: HarvestSpec,
    model: SyntheticModel,
    *,
    start_shard: int = 0,
    median_norms: Mapping[str, float] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    on_batch: Callable[[int], None] = lambda tokens_done: None,
) -> Iterator[Shard]:
    """Shards `start_shard, ...` of `spec.max_tokens` tokens, `spec.shard_tokens` rows each (the
    last may hold fewer); shard k's rows are its own seeded stream, the same bytes on any attempt.
    `median_norms` (hook -> shard 0's median norm) when resuming past shard 0."""
    assert spec.source == "synthetic", "a model's harvest runs saeq.jobs.harvest.harvest_activations"
    (hook,) = spec.hooks
    medians = dict(median_norms or {})

    def check() -> None:
        if should_stop():
            raise Cancelled("harvest cancelled")

    for index in range(start_shard, spec.max_shards):
        start = index * spec.shard_tokens
        n = min(spec.shard_tokens, spec.max_tokens - start)
        acts_ND = shard_acts(model, spec.seed, index, n, check)
        norms_N = torch.linalg.vector_norm(acts_ND, dim=1)
        positions_N = torch.full((n,), NO_POSITION, dtype=torch.int32)
        if hook not in medians:  # shard 0 sets the sink rule's reference, as in a model's harvest
            medians[hook] = median_norm(positions_N, norms_N)
        tensors = {
            "acts": acts_ND.to(getattr(torch, spec.dtype)),
            "token_ids": torch.zeros(n, dtype=torch.int32),
            "doc_ids": torch.full((n,), -1, dtype=torch.int32),  # no document
            "positions": positions_N,
            "norms": norms_N,
        }
        sinks = sink_stats(positions_N, norms_N, medians[hook], spec.sink_norm_factor)
        on_batch(start + n)
        yield Shard(index, n, {hook: tensors}, {hook: sinks}, context_len=1)
