"""Cost plans against what happens: a harvest and a training of SmolLM2 (the demo's jobs, smaller)
each run three times on a local stack; before the second and third run of each, `Client.plan`
predicts its wall time from the runs before, and the table prints predicted against actual (issue
18, acceptance 4: within 25%). Round 1 is the worker's first load of the model (a cold start), so
round 2 is planned warm from a cold start alone and round 3 from a warm run. Also the plan's own
latency with that history.
Usage: python bench/plan.py [--tokens 65536] [--train-tokens 327680] [--home DIR] [--smoke]
--smoke: a tiny local Llama and a few thousand tokens, so the whole bench runs in well under a minute.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HOOK = "blocks.14.hook_resid_post"


def _run(client, spec, depends_on=()) -> dict:
    job = client.wait(client.submit(spec, depends_on=list(depends_on))["id"], timeout=3_600)
    if job["state"] != "succeeded":
        raise SystemExit(f"{job['kind']} job {job['id']} {job['state']}: {job['error']}")
    return job


def _row(round_: int, kind: str, plan: dict, actual: float) -> str:
    wall = plan["wall_s"]
    err = f"{wall / actual - 1:+.1%}" if wall else "-"
    return f"{round_:<6} {kind:<8} {wall or float('nan'):>12.1f} {actual:>10.1f} {err:>8}  {plan['basis_text']}"


def main() -> None:
    ap = argparse.ArgumentParser(description="Cost plans against what happens: predicted and actual wall time.")
    ap.add_argument("--tokens", type=int, default=65_536, help="harvest tokens (the demo's: 262,144)")
    ap.add_argument("--train-tokens", type=int, default=327_680, help="training tokens (the demo's: 2,457,600)")
    ap.add_argument("--home", type=Path, default=None, help="stack home (default: a temporary directory)")
    ap.add_argument("--smoke", action="store_true", help="tiny model and sizes: checks the bench runs, in seconds")
    args = ap.parse_args()

    from saeq.client.client import Client
    from saeq.dev.local_stack import LocalStack, StackOptions, free_port
    from saeq.specs import ActivationsRef, HarvestSpec, ModelSpec, SaeConfig, TrainSpec

    home = args.home or Path(tempfile.mkdtemp(prefix="saeq-bench-plan-"))
    hook, sae = HOOK, SaeConfig(name="topk-8x-k32", architecture="topk", expansion_factor=8, k=32)
    if args.smoke:
        from tests.tiny_model import save_tiny_llama

        tiny = save_tiny_llama(home / "tiny-llama", n_layers=2, d_model=32)
        hook, sae = (
            "blocks.0.hook_resid_post",
            SaeConfig(name="topk-2x-k4", architecture="topk", expansion_factor=2, k=4),
        )
        harvest_spec = HarvestSpec(
            model=ModelSpec(name=str(tiny)),
            hooks=[hook],
            max_tokens=2_048,
            context_len=64,
            batch_size=4,
            shard_tokens=512,
        )
        args.train_tokens = 4_096
    else:
        harvest_spec = HarvestSpec(hooks=[hook], max_tokens=args.tokens)
    rows = []
    roots = [str(home)] if args.smoke else None  # the tiny model lies under home
    with LocalStack(StackOptions(home=home, port=free_port(), local_path_roots=roots)) as stack:
        client = Client(stack.url, api_key=stack.admin_key, timeout=60)
        print(f"stack up: {stack.url}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        for round_ in (1, 2, 3):
            harvest_plan = client.plan(harvest_spec) if round_ > 1 else None
            harvest = _run(client, harvest_spec)
            train_spec = TrainSpec(
                activations=ActivationsRef(job_id=harvest["id"], hook=hook),
                total_tokens=args.train_tokens,
                saes=[sae],
                validation_tokens=512 if args.smoke else 16_384,  # the smoke harvest holds 2,048
            )
            train_plan = client.plan(train_spec) if round_ > 1 else None
            train = _run(client, train_spec)
            for plan, job in ((harvest_plan, harvest), (train_plan, train)):
                actual = job["finished_at"] - job["started_at"]
                figures = job["progress"]["figures"]
                start = {k: round(figures[k], 2) for k in ("startup_s", "model_load_s", "cold_start") if k in figures}
                print(f"round {round_}: {job['kind']} {job['id']} ran {actual:.1f} s {start}", flush=True)
                if plan is not None:
                    rows.append((round_, job["kind"], plan, actual))
                    print(_row(round_, job["kind"], plan, actual), flush=True)  # at once: a run may be cut short
        t0 = time.perf_counter()
        n = 3 if args.smoke else 20
        for _ in range(n):
            client.plan(train_spec)
        plan_ms = (time.perf_counter() - t0) / n * 1000
        print(f"load average at the end {os.getloadavg()[0]:.1f}")

    print(f"\n{'round':<6} {'kind':<8} {'predicted s':>12} {'actual s':>10} {'error':>8}  basis")
    for row in rows:
        print(_row(*row))
    print(f"\nPOST /v1/jobs?dry_run=true round trip: {plan_ms:.1f} ms (mean of {n}, through HTTP)")


if __name__ == "__main__":
    main()
