"""Transcoder training beside sparsify's, then the MLP replaced in SmolLM2, then the export in sparsify.

saeq's TopK skip-transcoder (`topk_skip_transcoder`: SmolLM2 block 14's MLP input,
`blocks.14.ln2.hook_normalized`, predicting its output, `blocks.14.hook_mlp_out`) and sparsify's own
transcoder trainer (`SparseCoderConfig(transcode=True, skip_connection=True)`, its Trainer.fit on a
stand-in model whose hooked layer maps the batch's inputs to their targets) fit the same batches in
the same order (one stored harvest's ordinary tokens, sinks left out), same width and k, taking
turns step by step in their own processes (bench/train.py's Turns: load from other programs falls on
both alike); only training is timed. Each is scored on the same held-out tokens: FVU against the
MLP's output. Then saeq's transcoder replaces the MLP in SmolLM2 on documents the harvest never read
(saeq.jobs.evaluate_transcoder: CE loss recovered, KL, with n), and its sparsify export is loaded by
`sparsify.SparseCoder.load_from_disk`, whose outputs on held-out activations are compared with saeq's.

The default budget is the demo's: 2,457,600 token-steps at d_sae 4,608 (8x) and k 32, batch 4,096.
The harvest is the one named by `--store` and `--job` (default: /work/bench-home, its harvest.json),
holding both hooks; this script never harvests SmolLM2 itself.

Usage: python bench/transcoder.py [--home /work/bench-home] [--job ID] [--tokens 2457600]
                                  [--eval-tokens 16384] [--json out.json] [--keep DIR]
       python bench/transcoder.py --splice-only DIR [--eval-tokens N]   (the export and splice of a --keep DIR)
Smallest check (a tiny random Llama harvested here, seconds): python bench/transcoder.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # bench.*; tests.tiny_model for --smoke (as bench/plan.py)

from bench.transcoder_train import compare  # noqa: E402
from saeq import keys  # noqa: E402
from saeq.platform.store import LocalStore  # noqa: E402

HOOK, TARGET = "blocks.14.ln2.hook_normalized", "blocks.14.hook_mlp_out"
DEMO_TOKENS, D_SAE, K, BATCH = 2_457_600, 4_608, 32, 4_096


# --- the export in sparsify, the MLP replaced ------------------------------------------------------


@torch.no_grad()
def export_in_sparsify(out: Path) -> dict:
    """sparsify's SparseCoder.load_from_disk of saeq's export, on the held-out inputs saeq saw:
    the largest difference from saeq's trained transcoder's outputs (and from saeq's own file's)."""
    from sparsify import SparseCoder

    from saeq.ml.sae import Transcoder, load_sae

    saved = torch.load(out / "saeq_outputs.pt")  # written by the saeq trainer's process (transcoder_train.py)
    x, y_saeq = saved["x"], saved["y_hat"]
    theirs = SparseCoder.load_from_disk(out / "sparsify").eval()
    y_theirs = theirs(x).sae_out
    ours = load_sae((out / "saeq").resolve())
    assert isinstance(ours, Transcoder)
    y_file = ours.transcode(x)
    return {
        "sparsify_loads": bool(theirs.cfg.transcode and theirs.cfg.skip_connection),
        "max_abs_diff": float((y_theirs - y_saeq).abs().max()),
        "max_abs_output": float(y_saeq.abs().max()),
        "saeq_file_max_abs_diff": float((y_file - y_saeq).abs().max()),
        "rows": x.shape[0],
    }


def held_out_contexts(manifest: dict, lm, n_tokens: int) -> list[torch.Tensor]:
    """Contexts of the documents after those the harvest read (the evaluate job's held-out rule:
    the same corpus and order, from n_docs_used + 1), as many tokens as asked."""
    from saeq.jobs.harvest import context_batches
    from saeq.ml.corpus import iter_documents
    from saeq.specs import BuiltinCorpus

    used = manifest["corpus"]
    corpus = BuiltinCorpus(name=used["name"], first_doc=used.get("first_doc", 0) + used["n_docs_used"] + 1)
    docs = iter_documents(corpus, seed=manifest["spec"]["seed"])
    batches = context_batches(
        docs, lm.tokenizer, context_len=manifest["context_len"], max_tokens=n_tokens, batch_size=8
    )
    return [ids for ids, _ in batches]


def splice_in_model(out: Path, manifest: dict, cfg: dict) -> dict:
    """saeq's transcoder in place of the MLP, on held-out documents: CE loss recovered and KL."""
    from saeq.jobs.evaluate_transcoder import evaluate_transcoder
    from saeq.ml.models import load_model
    from saeq.ml.sae import Transcoder, load_sae
    from saeq.ml.sinks import SinkReference
    from saeq.specs import ModelSpec

    tc = load_sae((out / "saeq").resolve())
    assert isinstance(tc, Transcoder)
    t0 = time.perf_counter()
    lm = load_model(ModelSpec.model_validate(manifest["spec"]["model"]), cache_dir=cfg["cache"])
    contexts = held_out_contexts(manifest, lm, cfg["eval_tokens"])
    sinks = manifest["hooks"][cfg["hook"]]["sinks"]
    r = evaluate_transcoder(
        tc,
        lm,
        contexts,
        hook=cfg["hook"],
        target_hook=cfg["target"],
        sinks=SinkReference(sinks["median_norm"], sinks["norm_factor"]),
    )
    return {**r.metrics, **r.counts, "contexts": sum(c.shape[0] for c in contexts), "wall_s": time.perf_counter() - t0}


# --- the run ---------------------------------------------------------------------------------------


def _print_rows(rows: list[dict], cfg: dict) -> None:
    print(f"\n{cfg['tokens']:,} training tokens each; FVU against the MLP's output on {rows[0]['validation_tokens']:,}")
    print("held-out ordinary tokens (sinks left out):")
    print(f"{'trainer':10s} {'tokens/s':>9s} {'seconds':>8s} {'FVU':>7s}")
    for r in rows:
        print(f"{r['trainer']:10s} {r['tokens_per_s']:9,.0f} {r['seconds']:8.1f} {r['fvu']:7.4f}")


def report(rows: list[dict], export: dict, spliced: dict | None, cfg: dict) -> dict:
    """Print the table and every figure; -> the one JSON object of them."""
    if rows:
        _print_rows(rows, cfg)
    rate = {r["trainer"]: r["tokens_per_s"] for r in rows}
    ratio = rate["saeq"] / rate["sparsify"] if "sparsify" in rate and "saeq" in rate else None
    if ratio is not None:
        print(f"saeq / sparsify: {ratio:.2f}x tokens/s")
    print(
        f"\nsaeq's export in sparsify (SparseCoder.load_from_disk): transcode+skip {export['sparsify_loads']}, "
        f"max abs diff from saeq's outputs {export['max_abs_diff']:.2e} on {export['rows']:,} held-out inputs "
        f"(largest output {export['max_abs_output']:.2f}); saeq's own file {export['saeq_file_max_abs_diff']:.2e}"
    )
    if spliced is not None:
        s = spliced
        print(
            f"\nthe MLP replaced in the model, {s['contexts']} held-out contexts ({s['tokens']:,} tokens, "
            f"{s['sinks_excluded']:,} sinks left clean, n = {s['loss_positions']:,} next-token predictions):\n"
            f"  FVU {s['fvu']:.4f}, L0 {s['l0']:.1f}; CE clean {s['ce_clean']:.4f}, transcoder "
            f"{s['ce_transcoder']:.4f}, MLP zeroed {s['ce_zero']:.4f}: CE loss recovered "
            f"{s['ce_loss_recovered']:.4f}; KL {s['kl_transcoder']:.4f} nats (zeroed {s['kl_zero']:.4f}), "
            f"{s['wall_s']:.0f} s"
        )
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "harvest_job": cfg["job"],
        "hook": cfg["hook"],
        "target_hook": cfg["target"],
        "d_sae": cfg["d_sae"],
        "k": cfg["k"],
        "batch": cfg["batch"],
        "tokens": cfg["tokens"],
        "trainers": {r["trainer"]: r for r in rows},
        "saeq_over_sparsify": ratio,
        "export": export,
        "splice": spliced,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=Path("/work/bench-home"), help="the harvest's stack home")
    ap.add_argument("--job", help="the harvest's job id (default: home/harvest.json's)")
    ap.add_argument("--tokens", type=int, default=DEMO_TOKENS, help="training token-steps per trainer")
    ap.add_argument("--eval-tokens", type=int, default=16_384, help="held-out tokens the model reads spliced")
    ap.add_argument("--no-splice", action="store_true", help="skip the model run (training and export only)")
    ap.add_argument(
        "--splice-only", type=Path, metavar="DIR", help="no training: the export check and the splice of a --keep DIR"
    )
    ap.add_argument("--peers", default="sparsify")
    ap.add_argument("--json", type=Path, help="also write every figure here, as one JSON object")
    ap.add_argument("--smoke", action="store_true", help="a tiny random Llama harvested here, tiny sizes")
    ap.add_argument("--keep", type=Path, help="write the exports here (kept), not in a temporary folder")
    args = ap.parse_args()

    cfg = {"hook": HOOK, "target": TARGET, "d_sae": D_SAE, "k": K, "batch": BATCH, "tokens": args.tokens}
    cfg |= {"validation_tokens": 16_384, "eval_tokens": args.eval_tokens, "cache": os.path.expanduser("~/.cache/saeq")}
    with tempfile.TemporaryDirectory() as tmp:
        if args.smoke:
            home = Path(tmp)
            from bench import transcoder_smoke

            job, manifest = transcoder_smoke.smoke_harvest(home)
            cfg |= {"hook": transcoder_smoke.HOOK, "target": transcoder_smoke.TARGET, "cache": str(home / "cache")}
            cfg |= {
                "d_sae": 128,
                "k": 8,
                "batch": 256,
                "tokens": 16 * 256,
                "validation_tokens": 1024,
                "eval_tokens": 256,
            }
            store = home / "store"
        else:
            store = args.home / "store"
            job = args.job or json.loads((args.home / "harvest.json").read_text())["job_id"]
            manifest = json.loads(LocalStore(store).get(keys.manifest(job)))
        out = args.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        cfg |= {"store": str(store), "job": job, "out": str(out), "model": manifest["spec"]["model"]["name"]}
        for h in (cfg["hook"], cfg["target"]):
            if h not in manifest["hooks"]:
                raise SystemExit(f"harvest {job} has no hook {h} (it has {sorted(manifest['hooks'])})")
        load = os.getloadavg()
        print(
            f"harvest {job} ({manifest['n_tokens']:,} tokens, {cfg['model']}): {cfg['hook']} -> {cfg['target']}; "
            f"TopK skip-transcoder d_sae={cfg['d_sae']} k={cfg['k']} batch={cfg['batch']}; "
            f"{platform.machine()}, {os.cpu_count()} cores, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
            f"torch {torch.__version__}",
            flush=True,
        )
        names = ["saeq"] + [p for p in ("sparsify",) if p in args.peers.lower().split(",")]
        rows = [] if args.splice_only else compare(cfg, names)
        out = args.splice_only or out
        export = export_in_sparsify(out)
        spliced = None if args.no_splice else splice_in_model(out, manifest, cfg)
        figures = report(rows, export, spliced, cfg)
    figures["load_after"] = os.getloadavg()[0]
    print(f"load average now {figures['load_after']:.2f}")
    line = json.dumps(figures)
    print("JSON " + line)
    if args.json:
        args.json.write_text(line + "\n")


if __name__ == "__main__":
    main()
