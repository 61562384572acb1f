"""The demo's TopK SAE with its decoder rows kept at unit norm against rows trained freely, on SmolLM2.

bench/synthetic.py found that free decoder rows started at norm 0.1 (SAELens's and Anthropic's
recipe) recover planted features much better than rows kept at unit norm (docs/synthetic.md); this
checks the switch on real activations: the demo's config (TopK, 8x width, k=32, the demo's token
budget) trained three ways in one data pass over the harvest `make demo` stored, so every variant
reads the same batches, then measured on the same held-out contexts.

Usage: python bench/decoder_norm.py [--tokens 2457600] [--arch topk] [--store ~/.saeq/demo/store]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "shared"), str(ROOT / "workers")]

from demo_train import HOOK, demo_harvest  # noqa: E402  (bench/, the script's own folder)

from saeq.jobs.train import train_from_harvest  # noqa: E402
from saeq.platform.store import LocalStore  # noqa: E402
from saeq.specs import ActivationsRef, SaeConfig, TrainSpec  # noqa: E402

VARIANTS = {
    "unit rows": {"normalize_decoder": True},
    "free rows from 1": {"normalize_decoder": False, "decoder_init_norm": 1.0},
    "free rows from 0.1 (default)": {},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=2_457_600, help="training token-steps (the demo's)")
    ap.add_argument("--arch", default="topk", choices=["topk", "batchtopk"])
    ap.add_argument("--store", type=Path, default=Path.home() / ".saeq" / "demo" / "store")
    args = ap.parse_args()
    job_id = demo_harvest(args.store)
    store = LocalStore(args.store)
    manifest = json.loads(store.get(f"jobs/{job_id}/manifest.json"))
    names = {label: f"{args.arch}-{i}" for i, label in enumerate(VARIANTS)}
    spec = TrainSpec(
        activations=ActivationsRef(job_id=job_id, hook=HOOK),
        total_tokens=args.tokens,
        saes=[
            SaeConfig(name=names[label], architecture=args.arch, expansion_factor=8, k=32, **options)
            for label, options in VARIANTS.items()
        ],
    )
    load = os.getloadavg()
    print(
        f"demo harvest {job_id}, {HOOK}; {args.arch} 8x k=32, {args.tokens:,} token-steps, one data pass for all; "
        f"{platform.machine()}, {os.cpu_count()} CPUs, load {load[0]:.1f}"
    )
    result = train_from_harvest(spec, manifest, store.get)
    print(f"{'variant':30s} {'held-out FVU [95%]':28s} {'L0':>6s} {'dead (train)':>12s} {'dead (held-out)':>15s}")
    for label, name in names.items():
        m = result.metrics[name]
        fvu = m.intervals["fvu"]
        print(
            f"{label:30s} {m.fvu:.4f} [{fvu.low:.4f}, {fvu.high:.4f}]{'':7s} {m.l0:6.1f} "
            f"{m.dead_fraction:12.2%} {m.dead_fraction_validation:15.2%}"
        )
    print(f"trained in {result.wall_s:.0f} s; load average now {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
