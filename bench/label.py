"""Labelling throughput of the local backend: features labelled per minute, and where the time goes.

A TopK SAE (8x, k=32) trained briefly on SmolLM2's block-14 activations (the harvest bench/train.py
caches), a feature index over held-out English articles, then the label job's own code: the local
SmolLM2 explainer (few-shot) and judge (P(Yes)), the metadata labeller, and the three scorers, on
the N most active features. Time inside the LLM (generate and yes/no forwards) and inside the
embedding model is measured apart from the rest (window sampling, prompts, scoring).
Usage: python bench/label.py [--features 32] [--index-tokens 65536] [--sae DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import cast

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HOOK = "blocks.14.hook_resid_post"


class Timed:
    """Wraps an object; time spent in the named methods adds up in `seconds`."""

    def __init__(self, inner, methods: tuple[str, ...]):
        self.inner, self.seconds, self.calls = inner, 0.0, 0
        for m in methods:
            setattr(self, m, self._timed(getattr(inner, m)))

    def _timed(self, fn):
        def call(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds += time.perf_counter() - t0
                self.calls += 1

        return call

    def __getattr__(self, name):
        return getattr(self.inner, name)


def trained_sae(cache: Path, tokens: int):
    """A TopK SAE on the cached bench harvest (harvested first when missing)."""
    from bench.train import BENCH_JOB, harvest
    from saeq.jobs.train import train_from_harvest
    from saeq.platform.store import LocalStore
    from saeq.specs import ActivationsRef, SaeConfig, TrainSpec

    root = cache / "store"
    manifest = harvest(root, 17 * 16_384)
    spec = TrainSpec(
        activations=ActivationsRef(job_id=BENCH_JOB, hook=HOOK),
        saes=[SaeConfig(expansion_factor=8, k=32)],
        total_tokens=tokens,
        checkpoint_every_tokens=None,
    )
    result = train_from_harvest(spec, manifest, LocalStore(root).get)
    sae = result.saes["sae0"]
    print(f"SAE: TopK 8x k=32 trained on {tokens:,} tokens, held-out FVU {result.metrics['sae0'].fvu:.3f}", flush=True)
    return sae, manifest["hooks"][HOOK]["sinks"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", type=int, default=32)
    ap.add_argument("--index-tokens", type=int, default=65_536)
    ap.add_argument("--train-tokens", type=int, default=1_228_800)
    ap.add_argument("--score-examples", type=int, default=8)
    ap.add_argument("--sae", type=Path, default=None, help="an SAE directory (SAELens or sparsify format)")
    ap.add_argument("--cache", type=Path, default=Path(os.path.expanduser("~/.cache/saeq/bench")))
    args = ap.parse_args()

    from saeq.jobs.evaluate import SinkReference
    from saeq.jobs.harvest import context_batches
    from saeq.jobs.label import label_features, select_features
    from saeq.ml.corpus import document_info, iter_documents
    from saeq.ml.explainers import LocalExplainer, LocalJudge, LocalLLM, MetadataExplainer, token_pieces
    from saeq.ml.features import build_feature_index
    from saeq.ml.models import load_model
    from saeq.ml.sae import SparseAutoencoder
    from saeq.ml.scoring import EmbeddingScorer
    from saeq.specs import BuiltinCorpus, LabelSpec, ModelSpec, TrainedSae

    torch.manual_seed(0)
    if args.sae:
        sae, sinks = SparseAutoencoder.load(args.sae), None
    else:
        sae, sink_info = trained_sae(args.cache, args.train_tokens)
        sinks = SinkReference(sink_info["median_norm"], sink_info["norm_factor"])
    lm = load_model(ModelSpec(), cache_dir=os.path.expanduser("~/.cache/saeq"))
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
        f"SmolLM2-135M-Instruct {HOOK}, d_sae {sae.d_sae}",
        flush=True,
    )

    corpus = BuiltinCorpus(first_doc=5000)  # past the harvest's documents
    batches = context_batches(
        iter_documents(corpus, seed=0), lm.tokenizer, context_len=128, max_tokens=args.index_tokens, batch_size=16
    )

    t0 = time.perf_counter()
    index = build_feature_index(sae, lm, HOOK, batches, sinks=sinks)
    t_index = time.perf_counter() - t0

    spec = LabelSpec(sae=TrainedSae(job_id="0" * 32), n_most_active=args.features, n_score_examples=args.score_examples)
    features = select_features(index, spec)
    decode = token_pieces(lm.tokenizer)

    llm = Timed(LocalLLM(lm), ("generate", "yes_probability"))
    embedder = Timed(EmbeddingScorer(), ("score",))
    # Timed stands in for what it wraps (same methods), hence the casts.
    explainers = [
        LocalExplainer(cast(LocalLLM, llm), decode, 24, "local"),
        MetadataExplainer(lambda ids: document_info(corpus, ids), decode),
    ]
    t0 = time.perf_counter()
    records = label_features(
        index,
        features,
        spec,
        explainers=explainers,
        judge=LocalJudge(cast(LocalLLM, llm), "local"),
        embedder=cast(EmbeddingScorer, embedder),
        decode=decode,
    )
    t_label = time.perf_counter() - t0

    rest = t_label - llm.seconds - embedder.seconds
    print(
        f"\nfeature index: {index.token_ids_CT.numel():,} tokens in {t_index:.1f} s "
        f"({index.token_ids_CT.numel() / t_index:,.0f} tokens/s)"
    )
    print(
        f"labelled and scored {len(features)} features x {len(explainers)} explainers "
        f"({len(records)} labels, detection + fuzzing + embedding, {args.score_examples} activating "
        f"+ {args.score_examples} silent windows each) in {t_label:.1f} s"
    )
    print(f"  {60 * len(features) / t_label:.1f} features/min ({60 * len(records) / t_label:.1f} labels/min)")
    print(
        f"  time in the LLM (SmolLM2 generate + yes/no forwards, {llm.calls} batched calls): "
        f"{llm.seconds:.1f} s = {llm.seconds / t_label:.0%}"
    )
    print(f"  time in the embedding model: {embedder.seconds:.1f} s = {embedder.seconds / t_label:.0%}")
    print(f"  everything else (windows, prompts, metrics): {rest:.1f} s = {rest / t_label:.0%}")
    for r in records[:6]:
        det = r["scores"].get("detection", {})
        print(
            f"  feature {r['feature']:5d} {r['explainer']:9s} {r['label'][:40]!r:44s} "
            f"detection AUC {det.get('auc') if det.get('auc') is None else round(det['auc'], 2)}"
        )


if __name__ == "__main__":
    main()
