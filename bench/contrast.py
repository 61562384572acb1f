"""Contrastive search on English articles of two topics (issue 21, acceptance 2): a local stack
(API, Redis, one worker), a harvest of SmolLM2-135M-Instruct's blocks.14.hook_resid_post over the
builtin English articles and a TopK SAE trained on it, then `POST /v1/features/contrast` between
`--docs` articles of Physical sciences and as many of People. Prints each direction's features with
their held-out detection AUROC and Cohen's d (95% bootstrap intervals over the held-out articles)
and how many have an AUROC interval above 0.5. The contrast reads the articles in another seeded
order than the harvest, so some were in the SAE's training text; the held-out half is apart from
the selection half, which is what the check is about. `--smoke`: a tiny local Llama, seconds.
Usage: python bench/contrast.py [--harvest-tokens 65536] [--docs 64] [--max-tokens 128] [--smoke]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench.inspect_live, tests.tiny_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--harvest-tokens", type=int, default=65_536)
    ap.add_argument("--docs", type=int, default=64, help="articles of each topic (4-256)")
    ap.add_argument("--max-tokens", type=int, default=128, help="each article cut at this many tokens")
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--smoke", action="store_true", help="a tiny local model (does it run)")
    args = ap.parse_args()

    from bench.inspect_live import _run
    from saeq.client.cli_contrast import contrast_table
    from saeq.client.client import Client
    from saeq.dev.local_stack import LocalStack, StackOptions, free_port
    from saeq.specs import ActivationsRef, HarvestSpec, ModelSpec, SaeConfig, TrainSpec

    home = Path(tempfile.mkdtemp(prefix="saeq-bench-contrast-"))
    hook, model, sae, roots = "blocks.14.hook_resid_post", ModelSpec(), SaeConfig(expansion_factor=8, k=32), None
    if args.smoke:
        from tests.tiny_model import save_tiny_llama

        tiny = save_tiny_llama(home / "tiny-llama", n_layers=2, d_model=32)
        hook, model, sae, roots = "blocks.0.hook_resid_post", ModelSpec(name=str(tiny)), SaeConfig(k=4), [str(home)]
    tokens = 8_192 if args.smoke else args.harvest_tokens
    t0 = time.monotonic()
    # A cold worker loads SmolLM2 inside the request: on 2 loaded cores that took most of the 120 s default.
    opts = StackOptions(home=home, port=free_port(), local_path_roots=roots, extra_env={"SAEQ_LIVE_TIMEOUT_S": "600"})
    with LocalStack(opts) as stack:
        client = Client(stack.url, api_key=stack.admin_key, timeout=600)
        harvest = _run(client, HarvestSpec(model=model, hooks=[hook], max_tokens=tokens, context_len=128))
        train_spec = TrainSpec(
            activations=ActivationsRef(job_id=harvest["id"], hook=hook),
            saes=[sae],
            total_tokens=tokens - 4_096,
            validation_tokens=2_048,
            checkpoint_every_tokens=None,
        )
        train = _run(client, train_spec)
        t1 = time.monotonic()
        load0 = os.getloadavg()
        sides = [{"corpus": "wiki-en", "topic": t, "max_docs": args.docs} for t in ("Physical sciences", "People")]
        out = client.contrast(train["id"], sides[0], sides[1], top_k=args.top, max_tokens=args.max_tokens, seed=1)
        load1 = os.getloadavg()
    print(
        f"contrastive search: {'tiny Llama (smoke)' if args.smoke else 'SmolLM2-135M-Instruct'}, SAE topk "
        f"at {hook} trained on {tokens - 4_096:,} tokens ({t1 - t0:.0f} s with the harvest); a = Physical "
        f"sciences, b = People, {args.docs} English articles each, cut at {args.max_tokens} tokens; "
        f"{os.cpu_count()} CPUs, load average {load0[0]:.1f} before, {load1[0]:.1f} after"
    )
    print(contrast_table(out))
    for side in ("a", "b"):
        features = out[f"higher_on_{side}"]
        holding = sum(f["held_out_auroc"]["low"] > 0.5 for f in features)
        print(f"higher on {side}: {holding} of {len(features)} with a held-out AUROC interval above 0.5")


if __name__ == "__main__":
    main()
