"""The absorption check on SmolLM2 (blocks.14.hook_resid_post) in-process, timed: an SAE saved by
`SparseAutoencoder.save` (a directory; e.g. the demo's TopK 8x k=32), the harvest's sink rule, the check's defaults unless
given. Prints the summary, each letter and the wall time (docs/checks.md, "Absorption").

Usage: python bench/absorption.py SAE_DIR HARVEST_MANIFEST.json [--words-per-letter 64] [--n-examples 10]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from saeq.checks.absorption_words import measure_absorption
from saeq.ml.models import load_model
from saeq.ml.sae import SparseAutoencoder
from saeq.ml.sinks import SinkReference
from saeq.specs import ModelSpec
from saeq.specs.checks import AbsorptionCheck

HOOK = "blocks.14.hook_resid_post"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sae", type=Path)
    ap.add_argument("manifest", type=Path)
    ap.add_argument("--words-per-letter", type=int, default=AbsorptionCheck().words_per_letter)
    ap.add_argument("--n-examples", type=int, default=AbsorptionCheck().n_examples)
    ap.add_argument("--cache-dir", default=os.path.expanduser("~/.cache/saeq"))
    args = ap.parse_args()
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}, torch threads {torch.get_num_threads()}")
    sinks_doc = json.loads(args.manifest.read_text())["hooks"][HOOK]["sinks"]
    sinks = SinkReference(sinks_doc["median_norm"], sinks_doc["norm_factor"])
    sae = SparseAutoencoder.load(args.sae.resolve()).eval()
    lm = load_model(ModelSpec(), cache_dir=args.cache_dir)
    spec = AbsorptionCheck(words_per_letter=args.words_per_letter, n_examples=args.n_examples)
    t0 = time.perf_counter()
    doc = measure_absorption(spec, sae, lm, HOOK, sinks=sinks, batch_size=16, seed=0)
    wall = time.perf_counter() - t0
    s = doc["summary"]
    print(json.dumps(s, indent=1))
    for r in doc["letters"]:
        frac = r["absorption_fraction"] or {}
        print(
            f"{r['letter']}: probe F1 {r['probe_f1']:.2f} main {r['main_features']} (F1 {r['main_f1'] or 0:.2f}) "
            f"n={r['n_probe_positive']} fraction {frac.get('value', float('nan')):.3f} full {r['n_full']} "
            f"absorbed {[(a['word'], round(a['fraction'], 2), a['absorber']) for a in r['absorbed'][:4]]}"
        )
    print(f"wall {wall:.1f} s for {s['n_prompt_tokens']:,} prompt tokens; load {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
