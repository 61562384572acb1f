"""Harvest throughput beside the bare forward pass it cannot beat, on the builtin SmolLM2.

The harvest runs the real path (packing, hooks, early stop, shard tensors, safetensors bytes);
the bare pass runs embed + blocks[:15] by hand on the same contexts, with no hooks. Target: the
harvest reaches >= 90% of the bare pass. Usage: python bench/harvest.py [--batches 10]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import statistics
import time

import torch
from transformers.masking_utils import create_causal_mask

from saeq.jobs.harvest import harvest_activations, pack_contexts
from saeq.ml.corpus import iter_documents
from saeq.ml.models import load_model
from saeq.ml.shards import write_shard_bytes
from saeq.specs import HarvestSpec

HOOK, BLOCK = "blocks.14.hook_resid_post", 14
B, T = 16, 128


def bare_forward(model, ids_BT: torch.Tensor) -> torch.Tensor:
    """The residual stream after block 14, computed the way LlamaModel.forward does, minus hooks."""
    base = model.model
    h_BTD = base.embed_tokens(ids_BT)
    pos_1T = torch.arange(ids_BT.shape[1])[None]
    rope = base.rotary_emb(h_BTD, position_ids=pos_1T)
    mask = create_causal_mask(
        config=base.config, inputs_embeds=h_BTD, attention_mask=None, cache=None, position_ids=pos_1T
    )
    for layer in base.layers[: BLOCK + 1]:
        h_BTD = layer(h_BTD, attention_mask=mask, position_embeddings=rope, position_ids=pos_1T)
    return h_BTD


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--warmup", type=int, default=2, help="untimed batches of 16x128")
    ap.add_argument("--batches", type=int, default=10, help="timed batches of 16x128")
    ap.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/saeq"))
    args = ap.parse_args()

    lm = load_model(HarvestSpec().model, cache_dir=args.cache_dir)
    n = args.warmup + args.batches
    # One batch per shard, so every timed step also builds a shard and serialises it; fp32 shards
    # (the default stores bf16), so the harvest's numbers can be checked equal to the bare pass's.
    spec = HarvestSpec(
        hooks=[HOOK], batch_size=B, context_len=T, max_tokens=n * B * T, shard_tokens=B * T, dtype="float32"
    )
    contexts = pack_contexts(
        iter_documents(spec.corpus, seed=spec.seed),
        lm.tokenizer,
        context_len=T,
        prepend_bos=False,
        doc_separator=spec.doc_separator,
    )
    ids_CT = torch.tensor([ids for ids, _ in itertools.islice(contexts, n * B)])
    batches = ids_CT.split(B)  # the same contexts the harvest reads, in the same order
    shards = harvest_activations(spec, lm, iter_documents(spec.corpus, seed=spec.seed))

    # Alternate one harvest step and one bare batch, which goes first alternating too, so load
    # from other processes on this machine falls on both alike. CPU time (this process, all
    # threads) is a second view, steadier when the machine is shared.
    def harvest_step():
        shard = next(shards)
        write_shard_bytes(shard.tensors[HOOK], shard.metadata(HOOK))
        return shard.tensors[HOOK]["acts"]

    def bare_step(ids_BT):
        with torch.inference_mode():
            return bare_forward(lm.model, ids_BT).reshape(-1, lm.d_model)

    wall = {"harvest": [], "bare": []}
    cpu = {"harvest": [], "bare": []}
    for i, ids_BT in enumerate(batches):
        steps = [("harvest", harvest_step), ("bare", functools.partial(bare_step, ids_BT))]
        out = {}
        for name, step in steps if i % 2 == 0 else steps[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            out[name] = step()
            if i >= args.warmup:
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        assert torch.equal(out["harvest"], out["bare"])  # same numbers, not just the same speed
    ratios = [b / h for b, h in zip(wall["bare"], wall["harvest"], strict=True)]
    dt_h, dt_b = sum(wall["harvest"]), sum(wall["bare"])
    cpu_h, cpu_b = sum(cpu["harvest"]), sum(cpu["bare"])

    tokens = args.batches * B * T
    print(
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
        f"SmolLM2-135M-Instruct fp32, {HOOK}, batch {B}x{T}, {args.batches} timed batches "
        f"({tokens} tokens) after {args.warmup} warmup, {torch.get_num_threads()} threads"
    )
    print(f"bare forward (embed + blocks[:15]) : {tokens / dt_b:8.0f} tokens/s")
    print(f"harvest_activations + shard bytes  : {tokens / dt_h:8.0f} tokens/s")
    print(f"ratio harvest / bare (totals)      : {dt_b / dt_h:8.1%}")
    print(f"ratio, median of per-batch pairs   : {statistics.median(ratios):8.1%}")
    print(
        f"ratio of CPU seconds (bare/harvest): {cpu_b / cpu_h:8.1%} "
        f"({cpu_h / args.batches:.2f} s vs {cpu_b / args.batches:.2f} s per batch)"
    )


if __name__ == "__main__":
    main()
