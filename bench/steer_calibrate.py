"""Calibrated steering strengths against a fixed clamp to 2x the max activation (issue 21, acceptance 4).

SmolLM2-135M-Instruct and a TopK SAE (8x, k=32) at blocks.14.hook_resid_post (`--sae DIR`, e.g. one
trained from the demo's harvest: `--train HARVEST_STORE` trains it first, as the demo does). Features
are picked by topic contrast: for each of `--topics`, the feature whose per-article max activation
best tells that topic's articles from the others' (AUROC on a selection half, the held-out AUROC
printed; saeq.jobs.contrast), and the topic's name is its label (the concept). Its max activation is
the largest per-article max seen. Then saeq.jobs.steer_calibrate on `--prompts` neutral instructions,
split into fit and held-out halves by the seed: the calibrated clamp against the fixed 2x clamp on
the held-out ones, by the MiniLM concept gain (similarity of completion to label, steered minus
default) and the AxBench-style steering score of the judge (the local SmolLM2, or with `--judge-url`
an OpenAI-protocol endpoint: FIELD-NOTES says SmolLM2 cannot judge), each with a 95% bootstrap
interval over the held-out prompts, and their paired differences.

Usage: python bench/steer_calibrate.py --sae DIR [--train STORE --harvest JOB --tokens N]
       [--topics ...] [--prompts 20] [--tokens-out 24] [--json OUT]
       [--judge-url http://host:port/v1 --judge-model NAME [--judge-key-env VAR]]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HOOK = "blocks.14.hook_resid_post"
TOPICS = ["Physical sciences", "People", "Geography", "Biology and health sciences", "Arts", "Mathematics"]
INSTRUCTIONS = [
    "Tell me about your weekend.",
    "Write a short note to a friend.",
    "What should I cook for dinner tonight?",
    "Describe a place you would like to visit.",
    "Give me some advice for a job interview.",
    "Write two sentences about the morning.",
    "What is a good way to spend a rainy day?",
    "Tell me a short story.",
    "How do I stay focused while working?",
    "Describe your favourite season.",
    "What makes a good teacher?",
    "Write a sentence about a walk in the park.",
    "What would you do with a free afternoon?",
    "Give me a tip for learning something new.",
    "Describe an interesting object in a room.",
    "What is important in a friendship?",
    "Write a short message for a birthday card.",
    "How would you explain your job to a child?",
    "What do you like about holidays?",
    "Tell me something that happened today.",
    "Suggest a name for a small shop.",
    "What is a good habit to start?",
    "Describe the view from a window.",
    "Write a line for the start of a letter.",
]


def train(store_dir: str, harvest: str, tokens: int, out: Path) -> None:
    from saeq.jobs.train import train_from_harvest
    from saeq.platform.store import LocalStore
    from saeq.specs import ActivationsRef, SaeConfig, TrainSpec

    store = LocalStore(store_dir)
    manifest = json.loads(store.get(f"jobs/{harvest}/manifest.json"))
    spec = TrainSpec(
        activations=ActivationsRef(job_id=harvest, hook=HOOK),
        total_tokens=tokens,
        saes=[SaeConfig(name="topk-8x-k32", architecture="topk", expansion_factor=8, k=32)],
    )
    result = train_from_harvest(spec, manifest, store.get)
    result.saes["topk-8x-k32"].save(out, metadata={"hook_name": HOOK})
    print(f"trained {result.tokens:,} tokens in {result.wall_s:.0f} s: FVU {result.metrics['topk-8x-k32'].fvu:.3f}")


def pick_features(lm, sae, topics: list[str], per_topic: int, seed: int):
    """Per topic, the feature best telling its articles (first 128 tokens) from the other topics'."""
    from saeq.jobs.contrast import contrast_features, text_activations
    from saeq.ml.corpus import builtin_documents

    docs = list(builtin_documents("wiki-en"))[::-1]  # the corpus's end: the demo harvest reads from its start
    rng = np.random.default_rng(seed)
    ids = {}
    for topic in topics:
        own = [d for d in docs if d.topic == topic][:per_topic]
        ids[topic] = [lm.tokenizer(d.text, add_special_tokens=False)["input_ids"][:128] for d in own]
    acts = {t: text_activations(lm, sae, HOOK, v, sinks=None, aggregate="max", field=t) for t, v in ids.items()}
    picked = []
    for topic in topics:
        others = np.concatenate([a for t, a in acts.items() if t != topic])
        others = others[rng.choice(len(others), size=min(len(others), per_topic), replace=False)]
        (best, *_), _ = contrast_features(acts[topic], others, top_k=1, seed=seed)
        max_act = float(max(a[:, best.feature].max() for a in acts.values()))
        auc = best.held_out_auroc
        print(
            f"  {topic:30s} feature {best.feature:5d}  held-out AUROC {auc.value:.3f} [{auc.low:.3f}, {auc.high:.3f}]"
            f"  max act {max_act:.1f}"
        )
        picked.append((best.feature, topic, max_act))
    return picked


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sae", type=Path, required=True)
    ap.add_argument("--train", metavar="STORE", help="train the SAE into --sae first, from this LocalStore's harvest")
    ap.add_argument("--harvest", help="with --train: the harvest job id")
    ap.add_argument("--tokens", type=int, default=2_457_600, help="with --train: the demo's training tokens")
    ap.add_argument("--topics", nargs="+", default=TOPICS[:4])
    ap.add_argument("--per-topic", type=int, default=48, help="articles per topic for the feature pick")
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--tokens-out", type=int, default=24)
    ap.add_argument("--multiples", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0, 16.0])
    ap.add_argument("--concept-gain", type=float, default=0.1)
    ap.add_argument("--max-kl", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--judge-url", help="an OpenAI-protocol endpoint as the judge (its base URL, ending in /v1)")
    ap.add_argument("--judge-model", help="with --judge-url: the model it serves")
    ap.add_argument("--judge-key-env", help="with --judge-url: the environment variable holding its API key")
    args = ap.parse_args()
    if args.judge_url and not args.judge_model:
        ap.error("--judge-url needs --judge-model")
    if args.train:
        train(args.train, args.harvest, args.tokens, args.sae)

    from saeq.jobs.steer import chat_prompt
    from saeq.jobs.steer_calibrate import Prompt, Target, calibrate
    from saeq.ml.explainers import LocalLLM
    from saeq.ml.models import load_model
    from saeq.ml.sae import SparseAutoencoder
    from saeq.ml.scoring import EmbeddingScorer
    from saeq.ml.steer_score import RatedText, rate_completions
    from saeq.specs import ModelSpec
    from saeq.specs.steer_calibrate import SteerCalibrate

    t0 = time.time()
    load = os.getloadavg()
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores, load {load[0]:.1f}")
    lm = load_model(ModelSpec(), cache_dir=os.path.expanduser("~/.cache/saeq"))
    sae = SparseAutoencoder.load(args.sae).eval()
    print(f"SAE d_sae={sae.d_sae} at {HOOK}; features by topic contrast ({args.per_topic} articles a side):")
    picked = pick_features(lm, sae, args.topics, args.per_topic, args.seed)
    prompts = [
        Prompt(text, chat_prompt(lm, [{"role": "user", "content": text}])) for text in INSTRUCTIONS[: args.prompts]
    ]
    embedder = EmbeddingScorer(device="cpu")
    if args.judge_url:
        from saeq.ml.llm import ChatEndpoint
        from saeq.ml.steer_score import EndpointRater

        key = os.environ.get(args.judge_key_env) if args.judge_key_env else None
        judge_llm = EndpointRater(ChatEndpoint(args.judge_url, args.judge_model, api_key=key))
        print(f"judge: {args.judge_model} at {args.judge_url}")
    else:
        judge_llm = LocalLLM(lm)
        print("judge: the local SmolLM2 (it answers alike whatever it is shown: FIELD-NOTES)")

    def judge(concept: str, prompt_texts: list[str], texts: list[str]) -> list[float]:
        items = [RatedText(concept, p, t) for p, t in zip(prompt_texts, texts, strict=True)]
        return [r.score for r in rate_completions(judge_llm, items)]

    spec = SteerCalibrate(
        features=[f for f, _, _ in picked],
        mode="clamp",
        multiples=args.multiples,
        concept_gain=args.concept_gain,
        max_kl=args.max_kl,
    )
    results = calibrate(
        lm,
        sae,
        HOOK,
        [Target(f, topic, m) for f, topic, m in picked],
        prompts,
        spec,
        max_new_tokens=args.tokens_out,
        similarity=embedder.similarity,
        judge=judge,
        seed=args.seed,
        on_feature=lambda done, total: print(f"  calibrated {done}/{total} ({time.time() - t0:.0f} s)", flush=True),
    )
    fmt = lambda e: f"{e.value:+.3f} [{e.low:+.3f}, {e.high:+.3f}]"
    print(f"\nfit {len(results[0].fit_prompts)} prompts, held out {len(results[0].held_out_prompts)}; "
          f"concept gain >= {args.concept_gain}, KL <= {args.max_kl}; multiples {args.multiples}")  # fmt: skip
    for r in results:
        sweep = ", ".join(f"{p.multiple:g}x: gain {p.concept_gain:+.3f} KL {p.kl_from_default:.2f}" for p in r.sweep)
        print(f"\nfeature {r.feature} ({r.concept}), max act {r.max_activation:.1f}: sweep {sweep}")
        print(f"  chosen {r.multiple:g}x = clamp {r.value:.1f} ({'met' if r.met else 'NOT met'})")
        for name, arm in (("calibrated", r.calibrated), ("clamp 2x", r.baseline)):
            assert arm.steering_score is not None  # the bench always judges
            print(
                f"  {name:10s} concept gain {fmt(arm.concept_gain)}  score {fmt(arm.steering_score)}  "
                f"KL {arm.kl_from_default.value:.2f}  ppl {arm.perplexity_unsteered.value:.1f}"
            )
        d = r.calibrated_minus_baseline
        print(f"  calibrated - clamp 2x: concept gain {fmt(d['concept_gain'])}, score {fmt(d['steering_score'])}")
    # Pooled over features: every feature shares the held-out prompts (one split), so the interval is
    # over the prompts, each prompt's figure the mean over features.
    from saeq.ml.intervals import paired_difference, ratio_of_sums

    for what in ("concept_gains", "scores"):
        a_FP = np.array([getattr(r.calibrated, what) for r in results])
        b_FP = np.array([getattr(r.baseline, what) for r in results])
        n_P = np.full(a_FP.shape[1], float(len(results)))
        d = paired_difference(
            ratio_of_sums(a_FP.sum(0), n_P), ratio_of_sums(b_FP.sum(0), n_P), len(n_P), unit="prompts"
        )
        print(
            f"pooled over {len(results)} features, {what}: calibrated {a_FP.mean():+.3f}, clamp 2x {b_FP.mean():+.3f}, "
            f"difference {fmt(d)} (n={len(n_P)} held-out prompts)"
        )
    print(f"\n{time.time() - t0:.0f} s; load now {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps([r.to_dict() for r in results], indent=1))


if __name__ == "__main__":
    main()
