"""Feature recovery on a known ground truth: saeq's TopK and BatchTopK beside SAELens's, one run.

One synthetic model (default: SAELens's own SyntheticModel, the generator behind SynthSAEBench,
at a CPU-sized SynthSAEBench-style config: Zipfian firing, hierarchy, low-rank correlation,
magnitude noise; `--source saeq`: saeq.ml.synthetic) feeds every trainer the IDENTICAL batches
(same seed, checked by a checksum per trainer). Each trainer fits the same width and k at the same
lr, warmup and decay: saeq through saeq.jobs.train.train_saes, SAELens through its SAETrainer
(its TopK / BatchTopK training SAEs, inference SAE saved and loaded back). All are scored by
saeq.checks.recovery (SynthSAEBench's definitions) on the same held-out stream; SAELens's own
mean_correlation_coefficient is printed beside saeq's MCC as a check.
Usage: python bench/synthetic.py [--source saelens|saeq] [--tokens 409600] [--features 512]
       [--d-model 128] [--k 8] [--lr 3e-3] [--threads 1]
       [--trainers saeq-topk,saeq-batchtopk,saelens-topk,saelens-batchtopk]
Smallest check (< 60 s): python bench/synthetic.py --smoke
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import tempfile
import time
from collections.abc import Callable, Iterator

import torch

Stream = Callable[[int, int], Iterator[tuple[torch.Tensor, torch.Tensor]]]  # (seed, n_batches) -> (acts_BD, codes_BF)


def saelens_source(F: int, D: int, batch: int) -> tuple[torch.Tensor, Stream, str]:
    """SAELens's SyntheticModel; its sampling draws on torch's global RNG, seeded per stream."""
    from sae_lens.synthetic import (
        HierarchyConfig,
        LowRankCorrelationConfig,
        SyntheticModel,
        SyntheticModelConfig,
        ZipfianFiringProbabilityConfig,
    )

    cfg = SyntheticModelConfig(
        num_features=F,
        hidden_dim=D,
        firing_probability=ZipfianFiringProbabilityConfig(exponent=0.5, max_prob=0.4, min_prob=5e-4),
        hierarchy=HierarchyConfig(total_root_nodes=max(2, F // 64), branching_factor=4, max_depth=2),
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

    return model.feature_dict.feature_vectors.detach(), stream, "SAELens SyntheticModel (SynthSAEBench's generator)"


def saeq_source(F: int, D: int, batch: int) -> tuple[torch.Tensor, Stream, str]:
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

    return model.features_FD, stream, "saeq.ml.synthetic"


def checked(stream: Iterator[tuple[torch.Tensor, torch.Tensor]], sums: list[float]):
    """The activations only, their checksum appended to `sums` as they pass."""
    total = 0.0
    for acts, _ in stream:
        total += float(acts[:, 0].double().sum())
        yield acts
    sums.append(total)


def train_saeq(arch: str, args, batches: Iterator[torch.Tensor]):
    from saeq.jobs.train import train_saes
    from saeq.specs import ActivationsRef, SaeConfig, TrainSpec

    spec = TrainSpec(
        activations=ActivationsRef(job_id="5" * 32, hook="blocks.0.hook_resid_post"),  # unused: batches given
        saes=[SaeConfig(architecture=arch, d_sae=args.features, k=args.k, lr=args.lr)],
        total_tokens=args.tokens,
        batch_size=args.batch,
        checkpoint_every_tokens=None,
    )
    sae = train_saes(spec, batches).saes["sae0"]
    return sae.encode, sae.decode, sae.W_dec.detach()


def train_saelens(arch: str, args, batches: Iterator[torch.Tensor]):
    """SAELens 6's SAETrainer, one `step` per batch as in bench/train.py, activations scaled to
    mean norm sqrt(d_in) from the first batch and the factor folded in; the inference SAE
    (BatchTopK: its JumpReLU) saved and loaded back, as a user of SAELens would run it."""
    from sae_lens import SAE
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    from saeq.specs import TrainSpec

    defaults = TrainSpec.model_fields
    steps, D = args.tokens // args.batch, args.d_model
    torch.manual_seed(0)
    D_sae, k, norm = args.features, args.k, "expected_average_only_in"
    if arch == "topk":
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=D, d_sae=D_sae, k=k, normalize_activations=norm))
    else:
        sae = BatchTopKTrainingSAE(BatchTopKTrainingSAEConfig(d_in=D, d_sae=D_sae, k=k, normalize_activations=norm))
    tc = SAETrainerConfig(
        total_training_samples=steps * args.batch,
        train_batch_size_samples=args.batch,
        lr=args.lr,
        lr_warm_up_steps=int(defaults["lr_warmup"].default * steps),
        lr_decay_steps=int(defaults["lr_decay"].default * steps),
        lr_end=0.0,
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--source", choices=["saelens", "saeq"], default="saelens")
    ap.add_argument("--tokens", type=int, default=409_600, help="training tokens per trainer")
    ap.add_argument("--features", type=int, default=512, help="true features, and the SAEs' width")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--lr", type=float, default=3e-3, help="peak Adam lr, every trainer (saeq's default)")
    ap.add_argument("--eval-tokens", type=int, default=65_536)
    ap.add_argument("--trainers", default="saeq-topk,saeq-batchtopk,saelens-topk,saelens-batchtopk")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
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
    features_FD, stream, what = source(args.features, args.d_model, args.batch)
    held_out = list(stream(99, args.eval_tokens // args.batch))
    true_l0 = float(torch.cat([c for _, c in held_out]).gt(0).sum(1).float().mean())
    chance = mcc(torch.randn(args.features, args.d_model, generator=torch.Generator().manual_seed(0)), features_FD)
    print(
        f"{what}: {args.features} features in {args.d_model} dims, true L0 {true_l0:.2f}, MCC of a random decoder "
        f"{chance:.4f}; SAEs d_sae={args.features} "
        f"k={args.k}, {args.tokens:,} training tokens each (batch {args.batch}, lr {args.lr:g}), scored on "
        f"{len(held_out) * args.batch:,} held-out tokens; {platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads. The machine is shared and busy: seconds are not a speed figure.",
        flush=True,
    )
    head = f"{'trainer':18s} {'MCC':>6s} {'(SAELens fn)':>12s} {'best cos':>8s} {'F1':>6s} {'prec':>6s} {'recall':>6s}"
    print("\n" + head + f" {'unique':>6s} {'FVU':>6s} {'L0':>6s} {'dead':>6s} {'s':>6s}", flush=True)
    rows, sums = [], []
    for name in names:
        lib, arch = name.split("-")
        t0 = time.perf_counter()
        train = train_saeq if lib == "saeq" else train_saelens
        encode, decode, W_dec = train(arch, args, checked(stream(1, n_batches), sums))
        s = time.perf_counter() - t0
        r = score_recovery(encode, decode, W_dec, features_FD, held_out)
        theirs = float("nan")
        if have_saelens:
            from sae_lens.synthetic import mean_correlation_coefficient

            theirs = mean_correlation_coefficient(W_dec.float(), features_FD.float())
        rows.append((name, r))
        print(
            f"{name:18s} {r.mcc:6.4f} {theirs:12.4f} {r.mean_best_cos:8.4f} {r.f1:6.4f} {r.precision:6.4f} "
            f"{r.recall:6.4f} {r.uniqueness:6.4f} {r.fvu:6.4f} {r.l0:6.2f} {r.dead_fraction:6.1%} {s:6.1f}",
            flush=True,
        )
    assert len(set(sums)) == 1, f"the trainers saw different batches: checksums {sums}"
    print(f"every trainer read the same {n_batches} batches (checksum {sums[0]:.6g})")
    by = dict(rows)
    for arch in ("topk", "batchtopk"):
        ours, peer = by.get(f"saeq-{arch}"), by.get(f"saelens-{arch}")
        if ours and peer:
            verdict = "at least" if ours.mcc >= peer.mcc and ours.f1 >= peer.f1 else "BELOW"
            print(
                f"{arch}: saeq - SAELens: MCC {ours.mcc - peer.mcc:+.4f}, F1 {ours.f1 - peer.f1:+.4f} ({verdict} SAELens)"
            )


if __name__ == "__main__":
    main()
