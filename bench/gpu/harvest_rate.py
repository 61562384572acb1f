"""Harvest tokens/s beside the bare forward pass of the same model on one device.

The model is built from a config like SmolLM2-135M's (30 blocks, d 576, 9 heads, 3 KV heads, MLP
1,536, vocabulary 49,152) with random weights: nothing is downloaded. The harvest runs saeq's
harvest_activations (bf16 storage, the job's default micro-batches, forward stopped after block 14)
at blocks.14.hook_resid_post; the bare forward runs the whole model on the same contexts. Token
ids come from a byte-level stand-in tokenizer (the rate does not depend on which ids they are).
Prints `FIGURE name value unit` lines and the GPU memory the harvest used.

Usage: python bench/gpu/harvest_rate.py [--device cuda] [--tokens 262144] [--layers 30]
"""

from __future__ import annotations

import argparse
import time

import torch

HOOK = "blocks.14.hook_resid_post"


class ByteTokenizer:
    """What pack_contexts asks of a tokenizer: __call__(texts) -> {"input_ids": ...}, bos_token_id."""

    bos_token_id = 1

    def __call__(self, text, add_special_tokens: bool = False, verbose: bool = False) -> dict:
        encode = lambda t: [3 + b for b in t.encode()]
        return {"input_ids": encode(text) if isinstance(text, str) else [encode(t) for t in text]}


def smollm2_like(n_layers: int, device: str, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=49_152,
        hidden_size=576,
        intermediate_size=1_536,
        num_hidden_layers=n_layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        max_position_embeddings=2_048,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.to(device, dtype)  # pyright: ignore[reportArgumentType]  # transformers wraps `to` in a decorator its stubs mistype
    return model.eval().requires_grad_(False)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    from saeq.jobs.harvest import harvest_activations
    from saeq.ml.corpus import Document
    from saeq.ml.models import LoadedModel
    from saeq.ml.placement import gpu_memory_figures, reset_gpu_memory_peak
    from saeq.specs import HarvestSpec, ModelSpec

    ap = argparse.ArgumentParser(description="harvest tokens/s beside the bare forward")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokens", type=int, default=262_144)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=64, help="contexts per forward (HarvestSpec.batch_size)")
    ap.add_argument("--hook", default=HOOK, help="the hook point harvested (a block below --layers)")
    ap.add_argument("--model-dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()

    model = smollm2_like(args.layers, args.device, getattr(torch, args.model_dtype))
    lm = LoadedModel(model, ByteTokenizer(), d_model=576, n_layers=args.layers, provenance={"name": "smollm2-like"})  # pyright: ignore[reportArgumentType]  # a stand-in tokenizer
    T = 128
    spec = HarvestSpec(
        model=ModelSpec(name="/smollm2-like", dtype=args.model_dtype),
        hooks=[args.hook],
        max_tokens=args.tokens,
        context_len=T,
        batch_size=args.batch_size,
        shard_tokens=min(args.tokens, 65_536),
    )
    text = "The quick brown fox jumps over the lazy dog; seven ships sailed north. " * 40
    docs = [Document(i, f"{i} {text}") for i in range(args.tokens // len(text) * 2 + 8)]

    def harvest() -> int:
        return sum(s.n_tokens for s in harvest_activations(spec, lm, iter(docs)))

    harvest()  # warm-up (the first pass also tokenises: both passes do, alike)
    reset_gpu_memory_peak(model)
    sync(args.device)
    t0 = time.perf_counter()
    n = harvest()
    sync(args.device)
    harvest_s = time.perf_counter() - t0
    memory = gpu_memory_figures(model)

    ids_CT = torch.randint(3, 259, (n // T, T))
    with torch.inference_mode():
        for c0 in range(0, min(2 * args.batch_size, ids_CT.shape[0]), args.batch_size):  # warm-up
            model(input_ids=ids_CT[c0 : c0 + args.batch_size].to(args.device), use_cache=False)
        sync(args.device)
        t0 = time.perf_counter()
        for c0 in range(0, ids_CT.shape[0], args.batch_size):
            model(input_ids=ids_CT[c0 : c0 + args.batch_size].to(args.device), use_cache=False)
        sync(args.device)
        forward_s = time.perf_counter() - t0
    where = args.device.split(":")[0]
    print(f"FIGURE harvest_tokens_per_s_{where} {n / harvest_s:.0f} tokens/s")
    print(f"FIGURE bare_forward_tokens_per_s_{where} {n / forward_s:.0f} tokens/s")
    for name, value in memory.items():
        print(f"FIGURE harvest_{name} {value:.3f} {'GiB' if name.endswith('gib') else 'count'}")


if __name__ == "__main__":
    main()
