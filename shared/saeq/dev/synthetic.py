"""Synthetic activations for tests and benches without a model: a planted sparse dictionary, and
tokens written to a store as a harvest writes them."""

from __future__ import annotations

import torch


def fake_harvest(
    store,
    job_id: str,
    acts_ND: torch.Tensor,
    *,
    context_len: int = 16,
    shard_tokens: int = 64,
    hook: str = "blocks.1.hook_resid_post",
    norm_factor: float = 5.0,
) -> dict:
    """Write activations as a harvest would (shards under the job's keys) and return a manifest
    with the fields saeq.ml.activations reads, laid out like the worker's."""
    from saeq import keys
    from saeq.ml.shards import write_shard_bytes
    from saeq.ml.sinks import median_norm, sink_stats

    N, D = acts_ND.shape
    positions = torch.arange(context_len, dtype=torch.int32).repeat(N // context_len)
    norms = acts_ND.float().norm(dim=1)
    shards, median = [], None
    for index, start in enumerate(range(0, N, shard_tokens)):
        sl = slice(start, min(start + shard_tokens, N))
        n = sl.stop - sl.start
        if median is None:
            median = median_norm(positions[sl], norms[sl])
        s = sink_stats(positions[sl], norms[sl], median, norm_factor)
        tensors = {
            "acts": acts_ND[sl].contiguous(),
            "token_ids": torch.zeros(n, dtype=torch.int32),
            "doc_ids": torch.zeros(n, dtype=torch.int32),
            "positions": positions[sl],
            "norms": norms[sl],
        }
        key = keys.harvest_shard(job_id, hook, index)
        store.put(key, write_shard_bytes(tensors, {"hook": hook, "n_tokens": n}))
        shards.append({"index": index, "n_tokens": n, "key": key, "n_sinks": s.n_sinks})
    return {
        "format": "saeq.harvest/1",
        "kind": "harvest",
        "job_id": job_id,
        "d_model": D,
        "context_len": context_len,
        "n_tokens": N,
        "hooks": {
            hook: {
                "d_model": D,
                "n_tokens": N,
                "shards": shards,
                "sinks": {"median_norm": median, "norm_factor": norm_factor},
            }
        },
    }


def planted_dictionary(
    n_features: int = 64, d: int = 32, n_active: int = 3, n: int = 60_000, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens x = codes @ F with F (n_features, d) random unit features and sparse non-negative
    codes (n_active features per token, magnitudes in [0.5, 2.5]). -> (x (n, d), F)."""
    g = torch.Generator().manual_seed(seed)
    F = torch.randn(n_features, d, generator=g)
    F /= F.norm(dim=1, keepdim=True)
    idx = torch.rand(n, n_features, generator=g).topk(n_active, dim=1).indices
    mags = torch.rand(n, n_active, generator=g) * 2 + 0.5
    codes = torch.zeros(n, n_features).scatter_(1, idx, mags)
    return codes @ F, F
