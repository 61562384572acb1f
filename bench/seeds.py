"""Issue 19, acceptance 3 and 5 on the demo config: is a difference between two SAEs beyond the noise
that training seeds make? One train of the demo config (TopK 8x, k=32) under several seeds in one
data pass, plus a quarter-tokens SAE of the first seed; then, on the same held-out contexts of
SmolLM2, as the evaluate worker's `compare_with` would: seed A vs seed B per metric with its paired
interval, the seed noise floor from the other seeds (held apart from A and B), the verdict; the
demo vs the quarter-tokens SAE; the stable fraction of matched features between the two seeds.

Phases (each reuses what the one before left in --out): `train` (the seeds job, then the quarter),
`compare`, or `all`. `--smoke`: a tiny local Llama harvested in-process, seconds.

Usage: nice python bench/seeds.py [--home /work/bench-home] [--tokens 2457600] [--seeds 0 1 2 3]
       [--max-tokens 16384] [--phase all] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.tiny_model for --smoke
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "workers"))  # saeq_worker: the worker's helpers

HOOK = "blocks.14.hook_resid_post"
CONFIG = "topk-8x-k32"


def train_spec(harvest_id: str, hook: str, tokens: int, seeds: list[int] | None, config: dict, **kw):
    from saeq.specs import ActivationsRef, SaeConfig, TrainSpec

    return TrainSpec(
        activations=ActivationsRef(job_id=harvest_id, hook=hook),
        total_tokens=tokens,
        saes=[SaeConfig(name=CONFIG, architecture="topk", **config)],
        seeds=seeds,
        checkpoint_every_tokens=None,
        **kw,
    )


def train(store, harvest_id: str, hook: str, out: Path, spec, tag: str) -> dict:
    """Train `spec` on the stored harvest (the worker's shard reader), save each SAE under out/tag/."""
    from saeq.jobs.train import train_from_harvest
    from saeq.specs.manifests import HarvestManifest
    from saeq_worker.shard_reads import shard_reader

    manifest = json.loads(store.get(f"jobs/{harvest_id}/manifest.json"))
    read = shard_reader(store, HarvestManifest.model_validate(manifest).hooks[hook], None)
    last = [0.0]

    def progress(p) -> None:
        if time.monotonic() - last[0] > 60 or p.tokens >= p.total_tokens:
            last[0] = time.monotonic()
            fvus = " ".join(f"{v['fvu']:.3f}" for v in p.saes.values())
            print(
                f"  [{tag}] {time.strftime('%H:%M:%S')} {p.tokens:,}/{p.total_tokens:,} tokens, "
                f"{p.tokens_per_s:,.0f} tokens/s, train FVU {fvus}",
                flush=True,
            )

    t0 = time.perf_counter()
    result = train_from_harvest(spec, manifest, read, on_progress=progress)
    wall = time.perf_counter() - t0
    for name, sae in result.saes.items():
        sae.save(out / tag / name)
    doc = {
        "tag": tag,
        "spec": spec.model_dump(mode="json"),
        "wall_s": wall,
        "tokens": result.tokens,
        "saes": list(result.saes),
        "validation": {
            n: {"fvu": m.fvu, "l0": m.l0, "dead_fraction": m.dead_fraction} for n, m in result.metrics.items()
        },
        "seed_spread": result.seed_spread,
    }
    (out / tag / "train.json").write_text(json.dumps(doc, indent=1))
    print(
        f"  [{tag}] {result.tokens:,} tokens in {wall:,.0f} s; validation FVU "
        + ", ".join(f"{n} {m.fvu:.4f}" for n, m in result.metrics.items()),
        flush=True,
    )
    return doc


def smoke_harvest(home: Path):
    """A tiny local Llama harvested through a local stack: (store, harvest id, hook, SAE config)."""
    from saeq.client.client import Client
    from saeq.dev.local_stack import LocalStack, StackOptions, free_port
    from saeq.platform.store import LocalStore
    from saeq.specs import HarvestSpec, ModelSpec
    from tests.tiny_model import save_tiny_llama

    tiny = save_tiny_llama(home / "tiny-llama", n_layers=2, d_model=32)
    hook = "blocks.0.hook_resid_post"
    spec = HarvestSpec(
        model=ModelSpec(name=str(tiny)), hooks=[hook], max_tokens=8192, context_len=64, shard_tokens=2048
    )
    with LocalStack(StackOptions(home=home, port=free_port(), local_path_roots=[str(home)])) as stack:
        client = Client(stack.url, api_key=stack.admin_key, timeout=60)
        job = client.wait(client.submit(spec)["id"], timeout=300)
    assert job["state"] == "succeeded", job
    return LocalStore(home / "store"), job["id"], hook, {"d_sae": 128, "k": 4}


def held_out(store, harvest_id: str, hook: str, max_tokens: int):
    """(the model, contexts(), sink rule) as the evaluate worker reads a trained SAE's harvest: the
    documents after the harvest's, in its seed's order; the same contexts on every call."""
    from saeq.jobs.harvest import context_batches
    from saeq.ml.corpus import iter_documents
    from saeq.ml.models import load_model
    from saeq.ml.sinks import SinkReference
    from saeq.specs import EvaluateSpec, ModelSpec
    from saeq_worker.resolve import held_out_corpus

    manifest = json.loads(store.get(f"jobs/{harvest_id}/manifest.json"))
    model = ModelSpec.model_validate(manifest["spec"]["model"])
    lm = load_model(model, device="cpu", cache_dir=str(Path.home() / ".cache" / "saeq"))
    corpus, seed = held_out_corpus(manifest["corpus"]), manifest["spec"]["seed"]
    sinks_doc = manifest["hooks"][hook]["sinks"]
    sinks = SinkReference(sinks_doc["median_norm"], sinks_doc["norm_factor"])
    batch = EvaluateSpec.model_fields["batch_size"].default

    def contexts():
        docs = iter_documents(corpus, seed=seed, store=store)
        batches = context_batches(
            docs, lm.tokenizer, context_len=manifest["context_len"], max_tokens=max_tokens, batch_size=batch
        )
        return (ids for ids, _ in batches)

    return lm, contexts, sinks


def compare_all(store, harvest_id: str, hook: str, out: Path, seeds: list[int], max_tokens: int) -> None:
    """Evaluate every trained SAE on the same held-out contexts, then compare as the worker does."""
    from saeq.client.cli_compare import compare_table
    from saeq.jobs.compare import compare_metrics, match_features, seed_noise_floor
    from saeq.jobs.evaluate import evaluate_sae
    from saeq.ml.sae import SparseAutoencoder
    from saeq.specs.compare import FLOOR_STATISTIC, NO_FLOOR, Comparison, NoiseFloor

    t0 = time.perf_counter()
    lm, contexts, sinks = held_out(store, harvest_id, hook, max_tokens)
    print(f"model loaded in {time.perf_counter() - t0:.0f} s; load {os.getloadavg()[0]:.1f}", flush=True)
    names = {s: f"{CONFIG}-seed{s}" for s in seeds}
    paths = {s: out / "seeds" / n for s, n in names.items()} | {"quarter": out / "quarter" / CONFIG}
    saes, results = {}, {}
    for key, path in paths.items():
        t1 = time.perf_counter()
        saes[key] = SparseAutoencoder.load(path)
        results[key] = evaluate_sae(saes[key], lm, hook, contexts(), sinks=sinks)
        m = results[key].metrics
        print(
            f"  evaluated {path.parent.name}/{path.name}: FVU {m['fvu']:.4f}, CE recovered "
            f"{m['ce_loss_recovered']:.4f}, L0 {m['l0']:.1f} ({time.perf_counter() - t1:.0f} s)",
            flush=True,
        )
    train_docs = {t: json.loads((out / t / "train.json").read_text()) for t in ("seeds", "quarter")}

    def floor_of(held_apart: list[int]) -> NoiseFloor:
        kept = [s for s in seeds if s not in held_apart]
        floors, sd, values = seed_noise_floor([results[s] for s in kept])
        return NoiseFloor(
            source="seeds",
            statistic=FLOOR_STATISTIC,
            n=len(kept),
            floors=floors,
            config=CONFIG,
            saes=[names[s] for s in kept],
            seeds=kept,
            held_apart=[names[s] for s in held_apart],
            sd=sd,
            values=values,
        )

    def comparison(a, b, floor: NoiseFloor | None, features) -> Comparison:
        def who(key):
            return {
                "path": f"{paths[key].parent.name}",
                "name": paths[key].name,
                "architecture": "topk",
                "d_sae": saes[key].d_sae,
            }

        note = (
            NO_FLOOR
            if floor is None
            else (
                f"seed noise floor: n={floor.n} seeds ({', '.join(floor.saes)}), held apart from "
                f"{', '.join(floor.held_apart)}; floor = {FLOOR_STATISTIC}"
            )
        )
        rows = compare_metrics(results[a], results[b], None if floor is None else floor.floors)
        return Comparison(a=who(a), b=who(b), metrics=rows, features=features, noise_floor=floor, noise_note=note)

    a, b = seeds[0], seeds[1]
    t1 = time.perf_counter()
    match_ab = match_features(saes[a], saes[b], lm, hook, contexts(), sinks=sinks, min_cosine=0.7, min_correlation=0.5)
    match_aq = match_features(
        saes[a], saes["quarter"], lm, hook, contexts(), sinks=sinks, min_cosine=0.7, min_correlation=0.5
    )
    print(f"features matched in {time.perf_counter() - t1:.0f} s", flush=True)
    tokens = {t: d["tokens"] for t, d in train_docs.items()}
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load": os.getloadavg(),
        "train_tokens": tokens,
        "train_wall_s": {t: d["wall_s"] for t, d in train_docs.items()},
        "validation_seed_spread": train_docs["seeds"]["seed_spread"],
    }
    sections = [
        (f"seed {a} vs seed {b}, evaluation noise only", "seeds_no_floor", comparison(a, b, None, match_ab)),
        (
            f"seed {a} vs seed {b}, seed floor from seeds {seeds[2:]}",
            "seeds",
            comparison(a, b, floor_of([a, b]), match_ab),
        ),
        (
            f"demo config ({tokens['seeds']:,} tokens, seed {a}) vs a quarter of the tokens ({tokens['quarter']:,}, "
            f"seed {a}), seed floor from seeds {seeds[1:]}",
            "quarter",
            comparison(a, "quarter", floor_of([a]), match_aq),
        ),
    ]
    for title, key, c in sections:
        print(f"\n== {title}\n{compare_table(c.model_dump(mode='json'))}", flush=True)
        report[key] = c.model_dump(mode="json", exclude={"features": {"match", "cosine", "correlation"}})
    fvu = report["seeds"]["metrics"][0]
    print(
        f"\nacceptance 3: seed {a} vs {b} FVU: {fvu['verdict']}; demo vs quarter FVU: "
        f"{report['quarter']['metrics'][0]['verdict']}"
    )
    frac = match_ab.stable_fraction
    print(
        f"acceptance 5: stable features between seeds {a} and {b}: {match_ab.n_stable:,} of {match_ab.n_alive:,} "
        f"live latents = {frac.value:.3%} [{frac.low:.3%}, {frac.high:.3%}], mean matched decoder cosine "
        f"{match_ab.mean_cosine:.3f}"
    )
    (out / "compare.json").write_text(json.dumps(report, indent=1))
    print(
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, load {os.getloadavg()[0]:.1f}; "
        f"written {out / 'compare.json'}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=Path("/work/bench-home"), help="holds harvest.json and store/")
    ap.add_argument("--out", type=Path, default=None, help="trained SAEs and results (default HOME/seeds-bench)")
    ap.add_argument("--tokens", type=int, default=2_457_600, help="the demo's training tokens")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="A, B, then the floor's seeds")
    ap.add_argument("--max-tokens", type=int, default=16_384, help="held-out tokens both are evaluated on")
    ap.add_argument("--phase", choices=["train", "compare", "all"], default="all")
    ap.add_argument("--smoke", action="store_true", help="a tiny local Llama, harvested in-process: does it run")
    args = ap.parse_args()

    from saeq.platform.store import LocalStore
    from saeq_worker.threads import configure_torch

    threads = configure_torch(os.environ.get("SAEQ_TORCH_THREADS"))
    print(
        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, load {os.getloadavg()[0]:.1f}, "
        f"{threads} torch thread(s), {platform.processor() or platform.machine()}",
        flush=True,
    )
    if args.smoke:
        home = args.out or Path(os.environ.get("HOME", "/tmp")) / "seeds-smoke"
        store, harvest_id, hook, config = smoke_harvest(home)
        out = home
        args.tokens, args.max_tokens = min(args.tokens, 16_384), min(args.max_tokens, 2048)
        spec_kw: dict = {"batch_size": 512, "validation_tokens": 1024}
    else:
        harvest = json.loads((args.home / "harvest.json").read_text())
        assert harvest["state"] == "succeeded", harvest
        store, harvest_id, hook = LocalStore(args.home / "store"), harvest["job_id"], HOOK
        config = {"expansion_factor": 8, "k": 32}
        out = args.out or args.home / "seeds-bench"
        spec_kw = {}
    out.mkdir(parents=True, exist_ok=True)
    if args.phase in ("train", "all"):
        quarter = train_spec(harvest_id, hook, args.tokens // 4, None, config, seed=args.seeds[0], **spec_kw)
        train(store, harvest_id, hook, out, quarter, "quarter")
        seeded = train_spec(harvest_id, hook, args.tokens, args.seeds, config, **spec_kw)
        train(store, harvest_id, hook, out, seeded, "seeds")
    if args.phase in ("compare", "all"):
        compare_all(store, harvest_id, hook, out, args.seeds, args.max_tokens)


if __name__ == "__main__":
    main()
