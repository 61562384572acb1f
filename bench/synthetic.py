"""Feature recovery on a known ground truth: saeq's TopK, BatchTopK and Matryoshka BatchTopK beside
SAELens's, one run, one or more seeds.

One synthetic model (default: SAELens's own SyntheticModel, the generator behind SynthSAEBench,
at a CPU-sized SynthSAEBench-style config: Zipfian firing, hierarchy, low-rank correlation,
magnitude noise; `--source saeq`: saeq.ml.synthetic) feeds every trainer the IDENTICAL batches
(same seed, checked by a checksum per trainer). Each trainer fits the same width and k at the same
lr, warmup and decay: saeq through saeq.jobs.train.train_saes, SAELens through its SAETrainer
(its TopK / BatchTopK training SAEs, inference SAE saved and loaded back). All are scored by
saeq.checks.recovery (SynthSAEBench's definitions) on the same held-out stream; SAELens's own
mean_correlation_coefficient is printed beside saeq's MCC as a check.

`--hierarchy` (issue 20): SynthSAEBench-16k's structure scaled down (its 128 roots of 16,384
features become features/128 roots, branching 4, depth 3, every parent's children mutually
exclusive, probabilities compensated for the gating), the SAEs a quarter as wide as the true
features (SynthSAEBench's 4,096 of 16,384), Matryoshka widths roots x 4^i (its 128/512/2,048/4,096)
and k at ~3/4 of the true L0 (its 25 of 34). The training tokens are drawn once and held in memory
(SAELens's sampler costs more than a training step here); seed s shuffles their batch order and
seeds every trainer's initialisation, the same for all trainers.
Usage: python bench/synthetic.py [--source saelens|saeq] [--tokens 409600] [--features 512]
       [--d-model 128] [--d-sae F] [--k 8] [--lr 3e-3] [--threads 1] [--seeds 1] [--first-seed 0]
       [--hierarchy] [--widths levels|32,160,672,1024] [--decoder-init-norm 0.1] [--cache DIR]
       [--trainers saeq-topk,saeq-batchtopk,saelens-topk,saelens-batchtopk,saeq-matryoshka,
        saelens-matryoshka]
Smallest check (< 60 s): python bench/synthetic.py --smoke [--hierarchy]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator

import torch

Stream = Callable[[int, int], Iterator[tuple[torch.Tensor, torch.Tensor]]]  # (seed, n_batches) -> (acts_BD, codes_BF)
Source = tuple[torch.Tensor, Stream, str, torch.Tensor]  # features_FD, stream, description, depth_F


def tree_depths(F: int, roots) -> torch.Tensor:
    """Each feature's depth in SAELens's hierarchy forest (0: a root), -1 outside every tree: (F,)."""
    depth_F = torch.full((F,), -1, dtype=torch.long)
    level = [(node, 0) for node in roots]
    while level:
        node, d = level.pop()
        if node.feature_index is not None:
            depth_F[node.feature_index] = d
        level += [(child, d + 1) for child in node.children]
    return depth_F


def saelens_source(F: int, D: int, batch: int, hierarchy: bool = False) -> Source:
    """SAELens's SyntheticModel; its sampling draws on torch's global RNG, seeded per stream."""
    from sae_lens.synthetic import (
        HierarchyConfig,
        LowRankCorrelationConfig,
        SyntheticModel,
        SyntheticModelConfig,
        ZipfianFiringProbabilityConfig,
    )

    tree = HierarchyConfig(total_root_nodes=max(2, F // 64), branching_factor=4, max_depth=2)
    what = "SAELens SyntheticModel (SynthSAEBench's generator)"
    if hierarchy:  # SynthSAEBench-16k's tree, scaled: 128 roots of 16,384 features, depth 3, all ME
        tree = HierarchyConfig(
            total_root_nodes=max(2, F // 128),
            branching_factor=4,
            max_depth=3,
            mutually_exclusive_portion=1.0,
            compensate_probabilities=True,
        )
        what += f", hierarchy {tree.total_root_nodes} roots x 4 x 4 x 4, children mutually exclusive"
    cfg = SyntheticModelConfig(
        num_features=F,
        hidden_dim=D,
        firing_probability=ZipfianFiringProbabilityConfig(exponent=0.5, max_prob=0.4, min_prob=5e-4),
        hierarchy=tree,
        correlation=LowRankCorrelationConfig(rank=16, correlation_scale=0.1),
        std_firing_magnitudes=0.15,
        mean_firing_magnitudes=1.0,
        seed=42,
    )
    model = SyntheticModel(cfg)

    def stream(seed: int, n_batches: int):
        torch.manual_seed(seed)
        for _ in range(n_batches):
            yield model.sample_with_features(batch)

    depth_F = tree_depths(F, model.hierarchy.roots if model.hierarchy is not None else [])
    return model.feature_dict.feature_vectors.detach(), stream, what, depth_F


def saeq_source(F: int, D: int, batch: int, hierarchy: bool = False) -> Source:
    from saeq.ml.synthetic import SyntheticConfig, SyntheticModel

    cfg = SyntheticConfig(
        n_features=F,
        d_model=D,
        zipf_exponent=0.8,  # true L0 near the SAELens config's (whose Zipf is rescaled to [min, max])
        max_prob=0.4,
        min_prob=5e-4,
        n_parents=max(2, F // 64),
        n_children=4,
        n_groups=max(1, F // 128),
        magnitude_std=0.15,
        noise_std=0.01,
        bias_norm=1.0,
        seed=42,
    )
    model = SyntheticModel(cfg)

    def stream(seed: int, n_batches: int):
        return ((b.acts_BD, b.codes_BF) for b in model.batches(batch, n_batches, seed=seed))

    depth_F = torch.full((F,), -1, dtype=torch.long)
    depth_F[model.parents_H], depth_F[model.children_HC.flatten()] = 0, 1
    return model.features_FD, stream, "saeq.ml.synthetic", depth_F


def checked(batches: Iterator[torch.Tensor], sums: list[float]):
    """The batches, a checksum of those read, in order, appended to `sums` when the generator ends
    or is closed: saeq's train_saes stops after its last batch without asking for another, so
    a checksum kept only at exhaustion was never appended for saeq's trainers."""
    total = 0.0
    try:
        for i, acts in enumerate(batches):  # weighted by position: the order counts too
            total += (i + 1) * float(acts[:, 0].double().sum())
            yield acts
    finally:
        sums.append(total)


def draw(stream: Stream, args, n_batches: int) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """The held-out batches (codes kept as "fires" only, what the scores read) and the training
    tokens (n_batches, batch, d_model), drawn once; kept in `--cache` for the next run alike."""
    key = f"{args.source}-{args.features}-{args.d_model}-{args.batch}-{int(args.hierarchy)}-{args.eval_tokens}"
    path = os.path.join(args.cache, f"synthetic-{key}.pt")
    if args.cache and os.path.exists(path):
        saved = torch.load(path)  # a longer pool's first n_batches are this one: the stream is seeded
        if saved["pool"].shape[0] >= n_batches:
            return list(zip(saved["held_x"], saved["held_fires"], strict=True)), saved["pool"][:n_batches]
    held_out = [(x, c > 0) for x, c in stream(99, args.eval_tokens // args.batch)]
    pool = torch.stack([x for x, _ in stream(1, n_batches)])
    if args.cache:
        os.makedirs(args.cache, exist_ok=True)
        held_x, held_fires = (torch.stack(t) for t in zip(*held_out, strict=True))
        torch.save({"held_x": held_x, "held_fires": held_fires, "pool": pool}, path + ".tmp")
        os.replace(path + ".tmp", path)
    return held_out, pool


def matryoshka_widths(args) -> list[int]:
    """Prefix widths (the ends of the nested prefixes, the last d_sae): `--widths`, by default
    roots x 4^i up to d_sae (SynthSAEBench's 128, 512, 2,048, 4,096); `levels`: the tree's levels
    summed (roots, + their children, ...: 32, 160, 672 of --features 4096), so prefix i can hold
    every feature down to depth i."""
    roots = max(2, args.features // 128)
    if args.widths not in ("", "levels"):
        return [int(w) for w in args.widths.split(",")]
    widths, w, total = [], roots, roots
    while (total if args.widths == "levels" else w) < args.d_sae:
        widths.append(total if args.widths == "levels" else w)
        w *= 4
        total += w
    return [*widths, args.d_sae]


def level_recovery(encode, W_dec: torch.Tensor, features_FD: torch.Tensor, depth_F: torch.Tensor, held_out) -> dict:
    """Per tree depth (and -1: outside the trees): the mean over its true features of the closest
    latent's |cos| and of that latent's F1 as a detector of the feature firing on held-out tokens."""
    from saeq.checks.recovery import abs_cosines

    best_cos_F, best_L_F = abs_cosines(W_dec.float().cpu(), features_FD).max(dim=0)
    tp, fp, fn = (torch.zeros(len(depth_F)) for _ in range(3))
    with torch.no_grad():
        for acts_BD, fires_BF in held_out:
            on_BF = (encode(acts_BD) != 0).cpu()[:, best_L_F]  # each feature's closest latent fires
            tp += (on_BF & fires_BF).sum(0)
            fp += (on_BF & ~fires_BF).sum(0)
            fn += (~on_BF & fires_BF).sum(0)
    f1_F = 2 * tp / (2 * tp + fp + fn).clamp_min(1)
    return {
        int(d): (int((depth_F == d).sum()), float(best_cos_F[depth_F == d].mean()), float(f1_F[depth_F == d].mean()))
        for d in depth_F.unique().tolist()
    }


def train_saeq(arch: str, args, batches: Iterator[torch.Tensor], seed: int):
    from saeq.jobs.train import train_saes
    from saeq.specs import ActivationsRef, SaeConfig, TrainSpec

    groups = None
    if arch == "matryoshka":
        ends = matryoshka_widths(args)
        arch, groups = "matryoshka_batchtopk", [b - a for a, b in zip([0, *ends[:-1]], ends, strict=True)]
    spec = TrainSpec(
        activations=ActivationsRef(job_id="5" * 32, hook="blocks.0.hook_resid_post"),  # unused: batches given
        saes=[
            SaeConfig(
                architecture=arch,
                d_sae=args.d_sae,
                k=args.k,
                lr=args.lr,
                matryoshka_groups=groups,
                decoder_init_norm=args.decoder_init_norm or None,
            )
        ],
        total_tokens=args.tokens,
        batch_size=args.batch,
        checkpoint_every_tokens=None,
        seed=seed,
    )
    sae = train_saes(spec, batches).saes["sae0"]
    return sae.encode, sae.decode, sae.W_dec.detach()


def train_saelens(arch: str, args, batches: Iterator[torch.Tensor], seed: int):
    """SAELens 6's SAETrainer, one `step` per batch as in bench/train.py, activations scaled to
    mean norm sqrt(d_in) from the first batch and the factor folded in; the inference SAE
    (BatchTopK, Matryoshka: its JumpReLU) saved and loaded back, as a user of SAELens would run it."""
    from sae_lens import SAE
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    from saeq.specs import SaeConfig, TrainSpec

    defaults = TrainSpec.model_fields
    steps, D = args.tokens // args.batch, args.d_model
    torch.manual_seed(seed)
    D_sae, k, norm = args.d_sae, args.k, "expected_average_only_in"
    common = dict(d_in=D, d_sae=D_sae, k=k, normalize_activations=norm)
    if args.decoder_init_norm:
        common["decoder_init_norm"] = args.decoder_init_norm
    if arch == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(**common))
    elif arch == "matryoshka":
        cfg = MatryoshkaBatchTopKTrainingSAEConfig(**common, matryoshka_widths=matryoshka_widths(args))
        sae = MatryoshkaBatchTopKTrainingSAE(cfg)
    else:
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(**common))
    tc = SAETrainerConfig(
        total_training_samples=steps * args.batch,
        train_batch_size_samples=args.batch,
        lr=args.lr,
        lr_warm_up_steps=int(defaults["lr_warmup"].default * steps),
        lr_decay_steps=int(defaults["lr_decay"].default * steps),
        lr_end=0.0,
        # saeq's dead window (AuxK's target), in steps: SAELens's default 1,000 steps is longer
        # than a CPU-sized run, so its AuxK never started and 72-83% of its latents stayed dead.
        dead_feature_window=max(1, SaeConfig.model_fields["dead_window_tokens"].default // args.batch),
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(tc, sae, data_provider=iter(()))
    for i, x in enumerate(batches):
        if i == 0:
            trainer.activation_scaler.scaling_factor = D**0.5 / float(x.norm(dim=1).mean())
        trainer.step(x)
        trainer.n_training_steps += 1
    factor = trainer.activation_scaler.scaling_factor
    assert factor is not None
    sae.fold_activation_norm_scaling_factor(factor)
    with tempfile.TemporaryDirectory() as tmp:
        sae.save_inference_model(tmp)
        inference = SAE.load_from_disk(tmp).eval()
    return inference.encode, inference.decode, inference.W_dec.detach()


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", choices=["saelens", "saeq"], default="saelens")
    ap.add_argument("--tokens", type=int, default=409_600, help="training tokens per trainer")
    ap.add_argument("--features", type=int, default=512, help="true features")
    ap.add_argument("--d-sae", type=int, default=0, help="the SAEs' width (0: features; --hierarchy: features / 4)")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=3e-3, help="peak Adam lr, every trainer (saeq's default)")
    ap.add_argument("--eval-tokens", type=int, default=65_536)
    ap.add_argument("--trainers", default="")
    ap.add_argument("--seeds", type=int, default=1, help="how many seeds: batch order and initialisations")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds first..first+N-1 (one per process, say)")
    ap.add_argument("--hierarchy", action="store_true", help="SynthSAEBench-16k's tree and widths, scaled down")
    ap.add_argument(
        "--widths",
        default="",
        help="Matryoshka prefix ends, comma-separated ('': roots x 4^i, SynthSAEBench's; 'levels': the tree's "
        "levels summed)",
    )
    ap.add_argument(
        "--decoder-init-norm",
        type=float,
        default=0.0,
        help="every trainer's initial decoder row norm (0: each trainer's default; saeq's and SAELens's are 0.1)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--cache", default="", help="keep the drawn tokens here for later runs ('': draw each run)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, one thread: does it run (< 60 s)")
    args = ap.parse_args()
    if args.smoke:
        args.tokens, args.features, args.d_model, args.k, args.batch, args.eval_tokens = (
            100 * 512,
            256,
            32,
            4,
            512,
            8192,
        )
        args.threads = 1  # tiny tensors gain nothing from threads, and lose much on a busy machine
    if not args.trainers:
        args.trainers = "saeq-topk,saeq-batchtopk,saelens-topk,saelens-batchtopk"
        if args.hierarchy:
            args.trainers = "saeq-batchtopk,saeq-matryoshka,saelens-batchtopk,saelens-matryoshka"
    args.d_sae = args.d_sae or (args.features // 4 if args.hierarchy else args.features)
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from saeq.checks.recovery import mcc, score_recovery

    names = args.trainers.split(",")
    have_saelens = importlib.util.find_spec("sae_lens") is not None
    if not have_saelens:
        names = [n for n in names if not n.startswith("saelens")]
        args.source = "saeq"
    source = saelens_source if args.source == "saelens" else saeq_source
    n_batches = args.tokens // args.batch
    features_FD, stream, what, depth_F = source(args.features, args.d_model, args.batch, args.hierarchy)
    t0 = time.perf_counter()
    held_out, pool = draw(stream, args, n_batches)
    drawn_s = time.perf_counter() - t0
    true_l0 = float(torch.cat([c for _, c in held_out]).sum(1).float().mean())
    chance = mcc(torch.randn(args.d_sae, args.d_model, generator=torch.Generator().manual_seed(0)), features_FD)
    widths = f", Matryoshka widths {matryoshka_widths(args)}" if any("matryoshka" in n for n in names) else ""
    print(
        f"{what}: {args.features} features in {args.d_model} dims, true L0 {true_l0:.2f}, MCC of a random decoder "
        f"{chance:.4f}; SAEs d_sae={args.d_sae} k={args.k}{widths}, {args.tokens:,} training tokens each "
        f"(batch {args.batch}, lr {args.lr:g}, decoder init norm {args.decoder_init_norm or 'default'}, drawn once in {drawn_s:.0f} s), {args.seeds} seed(s), scored on "
        f"{len(held_out) * args.batch:,} held-out tokens; {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {os.getloadavg()[0]:.1f}. "
        "The machine is shared and busy: seconds are not a speed figure.",
        flush=True,
    )
    head = f"{'trainer':18s} {'MCC':>6s} {'(SAELens fn)':>12s} {'best cos':>8s} {'F1':>6s} {'prec':>6s} {'recall':>6s}"
    print("\n" + head + f" {'unique':>6s} {'FVU':>6s} {'L0':>6s} {'dead':>6s} {'s':>6s} seed", flush=True)
    results: dict[str, list] = {n: [] for n in names}
    by_level: dict[str, list[dict]] = {n: [] for n in names}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        order = torch.randperm(n_batches, generator=torch.Generator().manual_seed(seed)).tolist()
        sums: list[float] = []
        for name in names:
            lib, arch = name.split("-")
            t0 = time.perf_counter()
            train = train_saeq if lib == "saeq" else train_saelens
            feed = checked((pool[i] for i in order), sums)
            encode, decode, W_dec = train(arch, args, feed, seed)
            feed.close()  # its checksum now, whether the trainer read to the end or stopped at its last batch
            s = time.perf_counter() - t0
            r = score_recovery(encode, decode, W_dec, features_FD, held_out)
            theirs = float("nan")
            if have_saelens:
                from sae_lens.synthetic import mean_correlation_coefficient

                theirs = mean_correlation_coefficient(W_dec.float(), features_FD.float())
            results[name].append(r)
            print(
                f"{name:18s} {r.mcc:6.4f} {theirs:12.4f} {r.mean_best_cos:8.4f} {r.f1:6.4f} {r.precision:6.4f} "
                f"{r.recall:6.4f} {r.uniqueness:6.4f} {r.fvu:6.4f} {r.l0:6.2f} {r.dead_fraction:6.1%} {s:6.1f} {seed}",
                flush=True,
            )
            if args.hierarchy:
                levels = level_recovery(encode, W_dec, features_FD, depth_F, held_out)
                by_level[name].append(levels)
                cells = [
                    f"{'outside' if d < 0 else f'depth {d}'} ({n}) cos {c:.3f} F1 {f:.3f}"
                    for d, (n, c, f) in levels.items()
                ]
                print(f"{'':18s} true features by tree depth: {'; '.join(cells)}", flush=True)
        assert len(sums) == len(names) and len(set(sums)) == 1, f"the trainers saw different batches: checksums {sums}"
        print(f"every trainer read the same {n_batches} batches (seed {seed}, checksum {sums[0]:.6g})", flush=True)
    summarise(results, args.seeds, by_level)


def summarise(results: dict[str, list], seeds: int, by_level: dict[str, list[dict]] | None = None) -> None:
    """Means and spread over the seeds, and the acceptance comparisons, seed by seed."""
    if seeds > 1:
        print(f"\nover {seeds} seeds: mean (sd, min-max)")
        for name, rs in results.items():
            cells = []
            for field in ("mcc", "f1", "l0", "fvu"):
                v = [getattr(r, field) for r in rs]
                cells.append(
                    f"{field.upper()} {statistics.mean(v):.4f} ({statistics.stdev(v):.4f}, {min(v):.4f}-{max(v):.4f})"
                )
            print(f"{name:18s} " + "  ".join(cells))

    def compare(a: str, b: str, label: str) -> None:
        if not (results.get(a) and results.get(b)):
            return
        wins = [x.mcc >= y.mcc and x.f1 >= y.f1 for x, y in zip(results[a], results[b], strict=True)]
        d_mcc = [x.mcc - y.mcc for x, y in zip(results[a], results[b], strict=True)]
        d_f1 = [x.f1 - y.f1 for x, y in zip(results[a], results[b], strict=True)]
        print(
            f"{label}: {a} - {b}: MCC {' '.join(f'{d:+.4f}' for d in d_mcc)}, F1 {' '.join(f'{d:+.4f}' for d in d_f1)} "
            f"by seed; {a} at least {b} on both in {sum(wins)} of {len(wins)} seed(s)"
        )

    for arch in ("topk", "batchtopk", "matryoshka"):
        compare(f"saeq-{arch}", f"saelens-{arch}", f"{arch}, saeq against SAELens")
    for lib in ("saeq", "saelens"):
        compare(f"{lib}-matryoshka", f"{lib}-batchtopk", f"hierarchy, {lib} Matryoshka against BatchTopK")
        a, b = (by_level or {}).get(f"{lib}-matryoshka"), (by_level or {}).get(f"{lib}-batchtopk")
        if a and b:  # the parents (features with children) are what absorption takes from BatchTopK
            for d in sorted(k for k in a[0] if k >= 0):
                d_cos = " ".join(f"{x[d][1] - y[d][1]:+.3f}" for x, y in zip(a, b, strict=True))
                d_f1 = " ".join(f"{x[d][2] - y[d][2]:+.3f}" for x, y in zip(a, b, strict=True))
                print(f"  depth {d} ({a[0][d][0]} features): best |cos| {d_cos}, F1 {d_f1} by seed")


if __name__ == "__main__":
    main()
