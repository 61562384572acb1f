"""What bf16 activation storage costs: the demo's SAE trained on fp32 shards and on their bf16 twin.

A bf16 harvest runs the model exactly as an fp32 one and copies each fp32 forward output into a
bfloat16 buffer (saeq.jobs.harvest._Recorder._record: `acts_ND.copy_(x_BTD)`, round to nearest
even); the norms the sink rule reads are taken from the fp32 output either way. So the bf16 twin of
the demo's stored fp32 harvest is the same shards with `acts` cast to bf16, written with
saeq.ml.shards.write_shard_bytes into a temporary local store: what a bf16 harvest of the same
spec would have stored. Both are trained with the demo's TrainSpec (same seed: same init, same
shuffle) and evaluated as the demo's EvaluateSpec does (held-out articles after the harvest's
documents, 16,384 tokens, batches of 8, sinks left out): FVU on the harvest's held-out tokens (the
train job's validation), FVU and CE loss recovered with the SAE spliced into the model.

Usage: python bench/bf16_storage.py [--train-tokens 2457600] [--eval-tokens 16384] [--out f.json]
(reduced size for a check: --train-tokens 98304 --eval-tokens 2048)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from saeq.jobs.evaluate import evaluate_sae
from saeq.jobs.harvest import context_batches
from saeq.jobs.train import train_from_harvest
from saeq.ml.corpus import iter_documents
from saeq.ml.models import load_model
from saeq.ml.shards import read_shard, read_shard_metadata, write_shard_bytes
from saeq.ml.sinks import SinkReference
from saeq.platform.store import LocalStore
from saeq.specs import ActivationsRef, CorpusSpec, ModelSpec, SaeConfig, TrainSpec

STORE = Path.home() / ".saeq" / "demo" / "store"
CACHE_DIR = str(Path.home() / ".cache" / "saeq")
HOOK = "blocks.14.hook_resid_post"
SAE_NAME = "topk-8x-k32"


def demo_harvest(store: LocalStore) -> dict:
    """The newest fp32 harvest of the demo's hook in the demo's store."""
    found = []
    for path in (store.root / "jobs").glob("*/manifest.json"):
        m = json.loads(path.read_text())
        if m.get("kind") == "harvest" and m.get("hooks", {}).get(HOOK, {}).get("dtype") == "float32":
            found.append((path.stat().st_mtime, m))
    if not found:
        raise SystemExit(f"no fp32 demo harvest under {store.root}: run `make demo` first")
    return max(found, key=lambda f: f[0])[1]


def bf16_twin(manifest: dict, source: LocalStore, dest: LocalStore) -> dict:
    """Copy the harvest into `dest` with acts cast to bf16; -> the twin's manifest (dtype bfloat16)."""
    job_id = hashlib.sha256(manifest["job_id"].encode() + b"-bf16").hexdigest()[:32]  # a job id's form
    info = manifest["hooks"][HOOK]
    shards = []
    for shard in info["shards"]:
        data = source.get(shard["key"])
        tensors = read_shard(data)
        tensors["acts"] = tensors["acts"].to(torch.bfloat16)  # what _Recorder's copy_ into bf16 does
        out = write_shard_bytes(tensors, read_shard_metadata(data))
        key = shard["key"].replace(manifest["job_id"], job_id)
        dest.put(key, out)
        shards.append({**shard, "key": key, "size": len(out), "sha256": hashlib.sha256(out).hexdigest()})
    hook_info = {**info, "dtype": "bfloat16", "shards": shards}
    return {**manifest, "job_id": job_id, "spec": {**manifest["spec"], "dtype": "bfloat16"}, "hooks": {HOOK: hook_info}}


def demo_train_spec(job_id: str, train_tokens: int) -> TrainSpec:
    """The demo's TrainSpec (saeq.dev.demo.run_demo) on harvest `job_id`."""
    return TrainSpec(
        activations=ActivationsRef(job_id=job_id, hook=HOOK),
        total_tokens=train_tokens,
        saes=[SaeConfig(name=SAE_NAME, architecture="topk", expansion_factor=8, k=32)],
    )


def held_out_corpus(harvest_corpus: dict) -> CorpusSpec:
    """The documents after those the harvest used, as saeq_worker.resolve.held_out_corpus picks them
    (not imported: the worker package reads its deployment settings on import)."""
    from pydantic import TypeAdapter

    spec = {k: v for k, v in harvest_corpus.items() if k != "n_docs_used"}
    spec.update(first_doc=spec.get("first_doc", 0) + harvest_corpus.get("n_docs_used", 0) + 1, max_docs=None)
    return TypeAdapter(CorpusSpec).validate_python(spec)


def evaluate(sae, lm, manifest: dict, eval_tokens: int, batch_size: int = 8) -> dict:
    """The demo's EvaluateSpec metrics (max_tokens, batch_size 8, sinks excluded) of one SAE."""
    sinks = manifest["hooks"][HOOK]["sinks"]
    docs = iter_documents(held_out_corpus(manifest["corpus"]), seed=manifest["spec"]["seed"])
    batches = (
        ids
        for ids, _ in context_batches(
            docs,
            lm.tokenizer,
            context_len=manifest["spec"]["context_len"],
            max_tokens=eval_tokens,
            batch_size=batch_size,
        )
    )
    result = evaluate_sae(sae, lm, HOOK, batches, sinks=SinkReference(sinks["median_norm"], sinks["norm_factor"]))
    return result.metrics


def main() -> None:
    parser = argparse.ArgumentParser(description="What bf16 activation storage costs (FVU, CE loss recovered).")
    parser.add_argument("--train-tokens", type=int, default=2_457_600, help="the demo's: 2,457,600")
    parser.add_argument("--eval-tokens", type=int, default=16_384, help="the demo's evaluate max_tokens")
    parser.add_argument("--store", type=Path, default=STORE)
    parser.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    args = parser.parse_args()

    source = LocalStore(args.store)
    fp32 = demo_harvest(source)
    started = time.time()
    load_before = os.getloadavg()
    figures: dict = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime(started)),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "load_avg_before": load_before,
        "harvest_job_id": fp32["job_id"],
        "train_tokens": args.train_tokens,
        "eval_tokens": args.eval_tokens,
    }
    with tempfile.TemporaryDirectory(prefix="saeq-bf16-") as tmp:
        twin_store = LocalStore(tmp)
        bf16 = bf16_twin(fp32, source, twin_store)
        print(f"bf16 twin of {fp32['job_id']}: {len(bf16['hooks'][HOOK]['shards'])} shards", flush=True)
        trained = {}
        for name, manifest, store in (("float32", fp32, source), ("bfloat16", bf16, twin_store)):
            spec = demo_train_spec(manifest["job_id"], args.train_tokens)
            result = train_from_harvest(spec, manifest, store.get)
            m = result.metrics[SAE_NAME]
            trained[name] = result.saes[SAE_NAME]
            figures[name] = {"train_fvu_heldout": m.fvu, "train_wall_s": result.wall_s, "l0": m.l0}
            print(
                f"{name}: trained {result.tokens:,} tokens in {result.wall_s:.0f} s, held-out FVU {m.fvu:.5f}",
                flush=True,
            )
        model_spec = ModelSpec.model_validate(fp32["spec"]["model"])
        lm = load_model(model_spec, cache_dir=CACHE_DIR)
        for name in ("float32", "bfloat16"):
            metrics = evaluate(trained[name], lm, fp32, args.eval_tokens)
            figures[name].update(eval_fvu=metrics["fvu"], ce_loss_recovered=metrics["ce_loss_recovered"])
            print(
                f"{name}: evaluate FVU {metrics['fvu']:.5f}, CE loss recovered {metrics['ce_loss_recovered']:.5f}",
                flush=True,
            )
    for metric in ("train_fvu_heldout", "eval_fvu", "ce_loss_recovered"):
        figures[f"delta_{metric}"] = figures["bfloat16"][metric] - figures["float32"][metric]
    figures["wall_s"] = time.time() - started
    figures["load_avg_after"] = os.getloadavg()
    for key in ("delta_train_fvu_heldout", "delta_eval_fvu", "delta_ce_loss_recovered"):
        print(f"FIGURE bf16_{key} {figures[key]:+.5f} (bf16 - fp32)")
    print(json.dumps(figures))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
