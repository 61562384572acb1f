"""TopK SAE training throughput and quality: saeq beside sparsify and SAELens, same data, one run.

Every trainer fits the same TopK SAE (d_in 576, 4,608 latents, k=32, batch 4,096, Adam at the
same peak lr) to the same batches, in the same order, of real SmolLM2 block-14 activations
(`blocks.14.hook_resid_post`, sinks removed, harvested by saeq's own harvest and cached), for the
same number of tokens; each is then scored on the same held-out ordinary tokens. saeq runs its
shipped recipe (the TrainSpec defaults); sparsify runs its own Trainer.fit; SAELens its
SAETrainer. Only training is timed. `--acceptance` also trains saeq's default spec end to end
(harvest reader, 2.4M tokens) and reports held-out FVU and dead latents.
Usage: python bench/train.py [--tokens 1024000] [--peers sparsify,saelens] [--synthetic]
       [--acceptance]
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

os.environ.setdefault("TQDM_DISABLE", "1")  # sparsify's and SAELens' progress bars

import torch  # noqa: E402

HOOK = "blocks.14.hook_resid_post"
BENCH_JOB = "b" * 32  # the cached harvest lives under this job id in a local store
D_SAE, K, BATCH = 4_608, 32, 4_096


# --- activations ---------------------------------------------------------------------------------

def harvest(store_dir: Path, n_tokens: int) -> dict:
    """Harvest `n_tokens` of the builtin SmolLM2 at HOOK into a local store, once; the manifest."""
    from saeq import keys
    from saeq.store import LocalStore

    store = LocalStore(store_dir)
    key = keys.manifest(BENCH_JOB)
    if store.exists(key):
        manifest = json.loads(store.get(key))
        if manifest["n_tokens"] >= n_tokens:
            return manifest
        raise SystemExit(f"{store_dir} holds a smaller harvest ({manifest['n_tokens']} tokens); "
                         "delete it or ask for fewer tokens")

    from saeq.corpus import iter_documents
    from saeq.jobs.harvest import harvest_activations
    from saeq.models import load_model
    from saeq.shards import write_shard_bytes
    from saeq.specs import HarvestSpec

    spec = HarvestSpec(hooks=[HOOK], max_tokens=n_tokens)
    lm = load_model(spec.model, cache_dir=os.path.expanduser("~/.cache/saeq"))
    shards, t0 = [], time.perf_counter()
    for shard in harvest_activations(spec, lm, iter_documents(spec.corpus, seed=spec.seed)):
        data = write_shard_bytes(shard.tensors[HOOK], shard.metadata(HOOK))
        shard_key = keys.harvest_shard(BENCH_JOB, HOOK, shard.index)
        store.put(shard_key, data)
        shards.append({"index": shard.index, "n_tokens": shard.n_tokens, "key": shard_key,
                       "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                       "meta": shard.metadata(HOOK)})
        print(f"  shard {shard.index}: {sum(s['n_tokens'] for s in shards):,} tokens, "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
    metas = [s.pop("meta") for s in shards]
    n0 = sum(int(m["n_position0"]) for m in metas)
    n_out = sum(int(m["n_outliers"]) for m in metas)
    tokens = sum(s["n_tokens"] for s in shards)
    # The fields saeq.activations reads, laid out as the worker's harvest manifest lays them out.
    manifest = {
        "format": "saeq.harvest/1", "kind": "harvest", "job_id": BENCH_JOB,
        "spec": spec.model_dump(mode="json"), "d_model": lm.d_model, "n_layers": lm.n_layers,
        "context_len": spec.context_len, "prepend_bos": spec.prepend_bos, "dtype": spec.dtype,
        "n_tokens": tokens, "n_contexts": tokens // spec.context_len,
        "hooks": {HOOK: {
            "d_model": lm.d_model, "dtype": spec.dtype, "n_tokens": tokens, "shards": shards,
            "sinks": {"rule": f"position == 0 or norm > {spec.sink_norm_factor:g} x median_norm",
                      "median_norm": float(metas[0]["median_norm"]),
                      "norm_factor": spec.sink_norm_factor, "n_position_zero": n0,
                      "n_norm_outliers": n_out, "n_sinks": n0 + n_out}}},
    }
    store.put(key, json.dumps(manifest, indent=1).encode())
    return manifest


def synthetic_store(store_dir: Path, n_tokens: int, d: int = 576) -> dict:
    """Planted-dictionary activations written as a harvest, for machines without the model."""
    from saeq.store import LocalStore
    from tests.saeq.conftest import fake_harvest, planted_dictionary

    store = LocalStore(store_dir)
    x, _ = planted_dictionary(n_features=2 * D_SAE, d=d, n_active=24, n=n_tokens, seed=0)
    return fake_harvest(store, BENCH_JOB, x * 10, context_len=128, shard_tokens=16_384, hook=HOOK)


# --- the three trainers ----------------------------------------------------------------------

class Order:
    """The batches every trainer sees: epoch e visits the training tokens in a random order
    (seeded by e), cut into batches of BATCH; batch i is `table[order[i]]`."""

    def __init__(self, n_rows: int, steps: int):
        per_epoch = n_rows // BATCH
        perms = [torch.randperm(n_rows, generator=torch.Generator().manual_seed(e))[:per_epoch * BATCH]
                 for e in range(-(-steps // per_epoch))]
        self.idx = torch.cat(perms)[:steps * BATCH].view(steps, BATCH)  # (steps, BATCH)


def train_saeq(table: torch.Tensor, order: Order, spec) -> tuple[float, object]:
    from saeq.jobs.train import train_saes

    t0 = time.perf_counter()
    result = train_saes(spec, (table[i] for i in order.idx))  # no validation: not training time
    return time.perf_counter() - t0, result


class _Rows(torch.nn.Module):
    """Stands for "the hooked layer": its output for token ids is their rows of the table."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = table

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.table[ids]  # (B, T) -> (B, T, d)


class _TableLM(torch.nn.Module):
    """The least a sparsify Trainer needs of a model: a module to hook at `layers.0`."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.layers = torch.nn.ModuleList([_Rows(table)])

    base_model = property(lambda self: self)
    device = property(lambda self: torch.device("cpu"))
    dummy_inputs = property(lambda self: {"input_ids": torch.zeros(1, 4, dtype=torch.long)})

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.layers[0](input_ids)


def train_sparsify(table: torch.Tensor, order: Order, spec) -> tuple[float, object]:
    """sparsify's own Trainer.fit (hooks, masking, FVU loss, AuxK, decoder projection, its
    linear-decay schedule), on a stand-in model whose hooked layer returns the same batches.
    Adam at saeq's peak lr and the same AuxK settings, so the comparison is of the trainers."""
    from sparsify import SparseCoderConfig, TrainConfig, Trainer

    cfg = spec.saes[0]
    seqs = order.idx.view(-1, 128)  # 32 sequences of 128 tokens make one batch of 4,096
    dataset = [{"input_ids": s} for s in seqs]
    with tempfile.TemporaryDirectory() as tmp:
        tc = TrainConfig(SparseCoderConfig(num_latents=D_SAE, k=K), batch_size=BATCH // 128,
                         optimizer="adam", lr=cfg.lr, lr_warmup_steps=int(spec.lr_warmup * len(order.idx)),
                         auxk_alpha=cfg.auxk_alpha, dead_feature_threshold=cfg.dead_window_tokens,
                         hookpoints=["layers.0"], log_to_wandb=False, save_every=10**9, save_dir=tmp)
        precision = torch.get_float32_matmul_precision()
        torch.manual_seed(0)
        trainer = Trainer(tc, dataset, _TableLM(table))
        t0 = time.perf_counter()
        trainer.fit()
        dt = time.perf_counter() - t0
        torch.set_float32_matmul_precision(precision)  # fit() sets "high" for everyone after it
    return dt, trainer


def train_saelens(table: torch.Tensor, order: Order, spec) -> tuple[float, object]:
    """SAELens 6's SAETrainer with its TopK training SAE and its defaults (aux loss 1.0, decoder
    init norm 0.1, rescale by decoder norm), one `step` per batch (the seam its fit and its
    MultiSAETrainer use); activations normalised to mean norm sqrt(d_in)
    ("expected_average_only_in") and the factor folded in at the end, as fit does. Adam at
    saeq's lr, warmup and decay."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    cfg, steps, d_in = spec.saes[0], len(order.idx), table.shape[1]
    torch.manual_seed(0)
    sae = TopKTrainingSAE(TopKTrainingSAEConfig(
        d_in=d_in, d_sae=D_SAE, k=K, normalize_activations="expected_average_only_in"))
    tc = SAETrainerConfig(
        total_training_samples=steps * BATCH, train_batch_size_samples=BATCH, lr=cfg.lr,
        lr_warm_up_steps=int(spec.lr_warmup * steps), lr_decay_steps=int(spec.lr_decay * steps),
        lr_end=0.0, dead_feature_window=max(1, cfg.dead_window_tokens // BATCH),
        logger=LoggingConfig(log_to_wandb=False))
    trainer = SAETrainer(tc, sae, data_provider=iter(()))
    t0 = time.perf_counter()
    trainer.activation_scaler.scaling_factor = d_in ** 0.5 / float(table[order.idx[0]].norm(dim=1).mean())
    for i in order.idx:
        trainer.step(table[i])
        trainer.n_training_steps += 1
    dt = time.perf_counter() - t0
    sae.fold_activation_norm_scaling_factor(trainer.activation_scaler.scaling_factor)
    return dt, trainer


@torch.no_grad()
def scores(encode, decode, x: torch.Tensor, chunk: int = 4096) -> tuple[float, float]:
    """FVU, saeq's definition: sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the held-out
    tokens; and the fraction of latents firing on none of them."""
    err, fired = 0.0, torch.zeros(D_SAE, dtype=torch.bool)
    for c in x.split(chunk):
        acts = encode(c)
        err += float((c - decode(acts)).pow(2).sum())
        fired |= (acts > 0).any(0)
    return err / float((x - x.mean(0)).pow(2).sum()), float((~fired).float().mean())


def compare(manifest: dict, store, tokens: int, peers: list[str]) -> list[dict]:
    """saeq (the TrainSpec defaults: the recipe it ships) and its peers, each on the same
    batches in the same order, one after the other; training time only."""
    from saeq.jobs.train import harvest_data
    from saeq.specs import SaeConfig, TrainSpec

    spec = TrainSpec(activations={"job_id": BENCH_JOB, "hook": HOOK},
                     saes=[SaeConfig(d_sae=D_SAE, k=K)], total_tokens=tokens, batch_size=BATCH,
                     checkpoint_every_tokens=None)
    data = harvest_data(spec, manifest, store)
    table, val = data.train_rows(), data.validation()
    order = Order(table.shape[0], tokens // BATCH)
    rows = []

    dt, result = train_saeq(table, order, spec)
    sae = result.saes["sae0"]
    rows.append(("saeq", dt, *scores(sae.encode, sae.decode, val)))
    print(f"  saeq done in {dt:.0f} s", flush=True)
    if "sparsify" in peers:
        dt, trainer = train_sparsify(table, order, spec)
        coder = next(iter(trainer.saes.values()))

        def encode(x):
            top = coder.encode(x)
            return top.top_acts.new_zeros(x.shape[0], D_SAE).scatter_(1, top.top_indices, top.top_acts)

        rows.append(("sparsify", dt, *scores(encode, lambda a: a @ coder.W_dec + coder.b_dec, val)))
        print(f"  sparsify done in {dt:.0f} s", flush=True)
    if "saelens" in peers:
        dt, trainer = train_saelens(table, order, spec)
        sl = trainer.sae.eval()
        rows.append(("SAELens", dt, *scores(sl.encode, sl.decode, val)))
        print(f"  SAELens done in {dt:.0f} s", flush=True)
    return [{"trainer": name, "tokens_per_s": tokens / dt, "fvu": f, "never_fired": nf}
            for name, dt, f, nf in rows]


def acceptance(manifest: dict, store) -> dict:
    """saeq's default TrainSpec on the harvest, as a user would run it."""
    from saeq.jobs.train import train_from_harvest
    from saeq.specs import TrainSpec

    spec = TrainSpec(activations={"job_id": BENCH_JOB, "hook": HOOK}, checkpoint_every_tokens=None)
    t0 = time.perf_counter()
    result = train_from_harvest(spec, manifest, store, progress_every_s=30, on_progress=lambda p: print(
        f"  {p.tokens:,} tokens, {p.tokens_per_s:,.0f} tokens/s, train FVU {p.saes['sae0']['fvu']:.3f}",
        flush=True))
    m = result.metrics["sae0"]
    return {"tokens": result.tokens, "wall_s": time.perf_counter() - t0, "fvu": m.fvu,
            "dead": m.dead_fraction, "never_fired": m.dead_fraction_validation, "l0": m.l0,
            "epochs": result.data["epochs"], "train_tokens": result.data["train_tokens_available"],
            "validation_tokens": m.validation_tokens, "spec": spec.saes[0].model_dump()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=250 * BATCH, help="training tokens per trainer")
    ap.add_argument("--harvest-tokens", type=int, default=17 * 16_384,
                    help="tokens to harvest (the last 16,384 are held out)")
    ap.add_argument("--peers", default="sparsify,saelens")
    ap.add_argument("--synthetic", action="store_true",
                    help="planted-dictionary activations instead of SmolLM2's")
    ap.add_argument("--acceptance", action="store_true",
                    help="also train saeq's default spec (2.4M tokens) and report FVU and dead latents")
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/saeq/bench"))
    ap.add_argument("--harvest-only", action="store_true")
    args = ap.parse_args()

    from saeq.store import LocalStore

    root = Path(args.cache) / ("synthetic" if args.synthetic else "store")
    manifest = (synthetic_store(root, args.harvest_tokens) if args.synthetic
                else harvest(root, args.harvest_tokens))
    if args.harvest_only:
        return
    store = LocalStore(root)
    print(f"{'synthetic' if args.synthetic else 'SmolLM2-135M-Instruct ' + HOOK}, "
          f"{manifest['n_tokens']:,} tokens harvested; TopK d_sae={D_SAE} k={K} batch={BATCH}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    rows = compare(manifest, store, args.tokens, args.peers.split(",") if args.peers else [])
    print(f"\n{args.tokens:,} training tokens each, FVU on the held-out ordinary tokens:")
    print(f"{'trainer':10s} {'tokens/s':>9s} {'FVU':>7s} {'never firing':>13s}")
    for r in rows:
        print(f"{r['trainer']:10s} {r['tokens_per_s']:9,.0f} {r['fvu']:7.4f} {r['never_fired']:13.1%}")
    base = {r["trainer"]: r["tokens_per_s"] for r in rows}
    for peer in ("sparsify", "SAELens"):
        if peer in base:
            print(f"saeq / {peer}: {base['saeq'] / base[peer]:.2f}x tokens/s")
    if args.acceptance:
        a = acceptance(manifest, store)
        print(f"\nacceptance (default TrainSpec): {a['tokens']:,} tokens "
              f"({a['epochs']:.1f} epochs of {a['train_tokens']:,}) in {a['wall_s']:.0f} s: "
              f"FVU {a['fvu']:.4f} on {a['validation_tokens']:,} held-out tokens, L0 {a['l0']:.1f}, "
              f"dead {a['dead']:.1%}, never firing on held-out {a['never_fired']:.1%}")


if __name__ == "__main__":
    main()
