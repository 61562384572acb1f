"""Steering latency: 32 new tokens with a feature clamped (and one added) against plain `generate` on
the same model, in one run, alternating so that load from other programs falls on both alike.

SmolLM2-135M-Instruct, an SAE of 4,608 latents at blocks.14.hook_resid_post (random weights unless
--sae is given: latency does not depend on what the SAE learned), greedy decoding with the KV cache,
the same prompt and seed. Target (issue 7): overhead at most 20% on CPU.
`--inspect N`: instead, live inspect latency through a local stack (bench/inspect_live.py: API,
Redis and a worker; SmolLM2 and an SAE trained there): p50/p90/p99 of N warm requests of a
64-token text (issue 21: p50 under 300 ms); `--smoke` with it: a tiny local Llama, seconds.
Usage: python bench/steer.py [--repeats 5] [--tokens 32] [--sae DIR] | --inspect N [--smoke]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench.inspect_live, tests.tiny_model

HOOK = "blocks.14.hook_resid_post"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--sae", type=Path, default=None)
    ap.add_argument("--inspect", type=int, default=0, metavar="N", help="only: N warm live inspect requests")
    ap.add_argument("--inspect-tokens", type=int, default=64, help="tokens of the inspected text")
    ap.add_argument("--smoke", action="store_true", help="with --inspect: a tiny local model (does it run)")
    args = ap.parse_args()
    if args.inspect:
        from bench.inspect_live import inspect_latency

        return inspect_latency(args.inspect, args.inspect_tokens, smoke=args.smoke)

    from saeq.jobs.steer import FeatureEdit, chat_prompt, generate
    from saeq.ml.models import load_model
    from saeq.ml.sae import SparseAutoencoder
    from saeq.specs import ModelSpec

    torch.manual_seed(0)
    lm = load_model(ModelSpec(), cache_dir=os.path.expanduser("~/.cache/saeq"))
    sae = SparseAutoencoder.load(args.sae) if args.sae else SparseAutoencoder(576, 4608, "topk", k=32)
    prompt = chat_prompt(lm, [{"role": "user", "content": "Tell me about your weekend."}])
    runs = {
        "plain generate": {},
        "clamp (encode every token)": {"hook": HOOK, "sae": sae, "edits": [FeatureEdit(7, "clamp", 20.0)]},
        "add (no encode)": {"hook": HOOK, "sae": sae, "edits": [FeatureEdit(7, "add", 20.0)]},
    }
    for kw in runs.values():  # warm up every path once
        generate(lm, prompt, max_new_tokens=4, min_new_tokens=4, **kw)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, kw in runs.items():
            t0 = time.perf_counter()
            out = generate(lm, prompt, max_new_tokens=args.tokens, min_new_tokens=args.tokens, **kw)
            times[name].append(time.perf_counter() - t0)
            assert len(out.token_ids) == args.tokens  # same work for every run
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; SmolLM2-135M-Instruct, "
        f"SAE d_sae={sae.d_sae} at {HOOK}; {args.tokens} new tokens after a {len(prompt)}-token prompt, "
        f"greedy, median of {args.repeats}"
    )
    base = statistics.median(times["plain generate"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(
            f"  {name:28s} {med * 1000:8.0f} ms  ({args.tokens / med:5.1f} tokens/s)  "
            f"overhead {100 * (med / base - 1):+5.1f}%"
        )


if __name__ == "__main__":
    main()
