"""The label job's judges on their control trials (saeq.jobs.label_controls), on real held-out
text and without an SAE: SmolLM2-135M-Instruct as detection and fuzzing judge, MiniLM as the
embedding scorer. Stand-in features are the builtin corpus's topics (a topic "fires" on every token
of its articles; label: the topic, as the metadata explainer names it), so the own-vs-other trials
have labels that fit by construction; the planted trials are the job's own.
Usage: python bench/judge_controls.py [--tokens 16384] [--cache-dir ~/.cache/saeq]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

from saeq.client.report import judge_controls_lines
from saeq.jobs.harvest import context_batches
from saeq.jobs.label_controls import run_controls
from saeq.ml.corpus import builtin_documents, iter_documents
from saeq.ml.explainers import LocalJudge, LocalLLM, token_pieces
from saeq.ml.features import FeatureIndex
from saeq.ml.models import load_model
from saeq.ml.scoring import EmbeddingScorer
from saeq.specs import LabelSpec, ModelSpec, TrainedSae
from saeq.specs.common import BuiltinCorpus

MIN_CONTEXTS = 12
"""A topic stands in for a feature when its articles reach this many contexts."""


def topic_index(lm, tokens: int) -> tuple[FeatureIndex, list[str]]:
    """Contexts of 128 tokens from late English articles (as a label job's held-out text), one
    stand-in feature per topic; position 0 of each context is a sink, as the sink rule makes it."""
    docs = {d.doc_id: d for d in builtin_documents("wiki-en")}
    batches = context_batches(
        iter_documents(BuiltinCorpus(first_doc=9000), seed=0),
        lm.tokenizer,
        context_len=128,
        max_tokens=tokens,
        batch_size=16,
    )
    ids, owners = zip(*batches, strict=True)
    ids_CT, docs_CT = torch.cat(ids), torch.cat(owners)
    topics = sorted({d.topic for d in docs.values() if d.topic})
    topic_of = {i: topics.index(d.topic) for i, d in docs.items() if d.topic}
    topic_CT = torch.tensor([[topic_of.get(int(o), -1) for o in row] for row in docs_CT])
    acts_CTS = torch.stack([(topic_CT == s).float() for s in range(len(topics))], -1)  # (C, T, topics)
    sinks_CT = torch.zeros_like(ids_CT, dtype=torch.bool)
    sinks_CT[:, 0] = True
    return FeatureIndex.from_dense(ids_CT, docs_CT, sinks_CT, acts_CTS), topics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "saeq"))
    args = ap.parse_args()
    t0 = time.monotonic()
    lm = load_model(ModelSpec(), device="cpu", cache_dir=args.cache_dir)
    index, topics = topic_index(lm, args.tokens)
    C = index.token_ids_CT.shape[0]
    features = [s for s in range(len(topics)) if int((index.context_maxima(s) > 0).sum()) >= MIN_CONTEXTS]
    records = [
        {
            "feature": s,
            "explainer": "topics",
            "label": topics[s],
            "description": f"Text from a Wikipedia article about {topics[s]}.",
        }
        for s in features
    ]
    print(f"{C} contexts, {len(features)} topics as features; set up in {time.monotonic() - t0:.0f} s")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    t0 = time.monotonic()
    controls = run_controls(
        index,
        features,
        records,
        LabelSpec(sae=TrainedSae(job_id="0" * 32), n_score_examples=8),
        judge=LocalJudge(LocalLLM(lm), "local:builtin:smollm2-135m-instruct"),
        embedder=EmbeddingScorer(),
        decode=token_pieces(lm.tokenizer),
    )
    print(f"controls in {time.monotonic() - t0:.0f} s")
    print("\n".join(judge_controls_lines([c.model_dump(mode="json") for c in controls])))


if __name__ == "__main__":
    main()
