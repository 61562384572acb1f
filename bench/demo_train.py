"""The demo's train step, before and after: the same TrainSpec on the same stored harvest, timed with
the code of a baseline git revision and with the working tree, taking turns in one run.

The demo trains a TopK SAE (8x width, k=32) on the harvest `make demo` stored under
~/.saeq/demo/store. Each round runs both trees in fresh processes, one after the other, for
`--tokens` tokens each (the demo itself trains longer; the step rate is what is compared). The
working tree runs as the worker does: the train job's shard reader (node cache and prefetch) and
torch threads from the CPU quota, where the tree has them; the baseline as its worker did then.
Load from other programs falls on both alike only when they alternate, so read the ratio, and say
whether the machine was idle.

Usage: python bench/demo_train.py [--baseline 83cc306] [--tokens 491520] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STORE = Path.home() / ".saeq" / "demo" / "store"
HOOK = "blocks.14.hook_resid_post"

CHILD = r"""
import json, sys, time
from pathlib import Path
import torch
from saeq.platform.store import LocalStore
from saeq.jobs.train import train_from_harvest
from saeq.specs import ActivationsRef, SaeConfig, TrainSpec

store_dir, job_id, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = LocalStore(store_dir)
manifest = json.loads(store.get(f"jobs/{job_id}/manifest.json"))
spec = TrainSpec(
    activations=ActivationsRef(job_id=job_id, hook="blocks.14.hook_resid_post"),
    total_tokens=tokens,
    saes=[SaeConfig(name="topk-8x-k32", architecture="topk", expansion_factor=8, k=32)],
)
read, how = store.get, "store.get"
try:  # the worker's way of reading shards, where this tree has one
    from saeq.specs.manifests import HarvestManifest
    from saeq_worker.shard_reads import shard_reader
    hook = HarvestManifest.model_validate(manifest).hooks[spec.activations.hook]
    read, how = shard_reader(store, hook, None), "shard_reader"
except ImportError:
    pass
try:  # the worker's torch threads, where this tree sets them
    import os
    from saeq_worker.threads import configure_torch
    configure_torch(os.environ.get("SAEQ_TORCH_THREADS"))
except ImportError:
    pass
t0 = time.perf_counter()
result = train_from_harvest(spec, manifest, read)
wall = time.perf_counter() - t0
print(json.dumps({"tokens": result.tokens, "train_wall_s": result.wall_s, "job_wall_s": wall,
                  "fvu": result.metrics["topk-8x-k32"].fvu, "threads": torch.get_num_threads(), "reader": how}))
"""


def demo_harvest(store: Path) -> str:
    """The id of the newest harvest the demo stored."""
    found = []
    for manifest in store.glob("jobs/*/manifest.json"):
        m = json.loads(manifest.read_text())
        if m.get("kind") == "harvest" and HOOK in m.get("hooks", {}):
            found.append((manifest.stat().st_mtime, m["job_id"]))
    if not found:
        raise SystemExit(f"no demo harvest under {store}: run `make demo` first")
    return max(found)[1]


def checkout(rev: str, into: Path) -> Path:
    subprocess.run(
        ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(into), rev], check=True, capture_output=True
    )
    return into


def run_tree(src: Path, store: Path, job_id: str, tokens: int) -> dict:
    paths = [str(src / "shared"), str(src / "workers"), str(src / "services")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(store), job_id, str(tokens)], env=env, capture_output=True, text=True
    )
    if out.returncode:
        raise SystemExit(f"the tree at {src} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="83cc306", help="git revision to compare against")
    ap.add_argument("--tokens", type=int, default=491_520)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--store", type=Path, default=STORE)
    args = ap.parse_args()
    job_id = demo_harvest(args.store)
    load = os.getloadavg()
    print(f"{platform.node()}: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"demo harvest {job_id}; {args.tokens:,} tokens per run; baseline {args.baseline} vs the working tree")
    with tempfile.TemporaryDirectory() as tmp:
        base = checkout(args.baseline, Path(tmp, "baseline"))
        try:
            rates: dict[str, list[float]] = {"baseline": [], "now": []}
            for r in range(args.rounds):
                for name, src in (("baseline", base), ("now", ROOT)):
                    t0 = time.perf_counter()
                    res = run_tree(src, args.store, job_id, args.tokens)
                    rate = res["tokens"] / res["train_wall_s"]
                    rates[name].append(rate)
                    print(
                        f"round {r + 1} {name:8s}: {rate:9,.0f} tokens/s in training ({res['train_wall_s']:.1f} s), "
                        f"job {time.perf_counter() - t0:.1f} s, FVU {res['fvu']:.4f}, "
                        f"{res['threads']} threads, {res['reader']}"
                    )
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], capture_output=True)
    best = {k: max(v) for k, v in rates.items()}
    print(
        f"best: baseline {best['baseline']:,.0f} tokens/s, now {best['now']:,.0f} tokens/s: "
        f"{best['now'] / best['baseline']:.2f}x; load average now {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
