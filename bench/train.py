"""TopK SAE training throughput and quality: saeq beside sparsify and SAELens, same data, one run.

Every trainer fits the same TopK SAE (d_in 576, 4,608 latents, k=32, batch 4,096, Adam at the
same peak lr) to the same batches, in the same order, of real SmolLM2 block-14 activations
(`blocks.14.hook_resid_post`, sinks removed, harvested by saeq's own harvest and cached), for the
same number of tokens; each is then scored on the same held-out ordinary tokens. saeq runs its
shipped recipe (the TrainSpec defaults); sparsify runs its own Trainer.fit; SAELens its
SAETrainer. Only training is timed. `--acceptance` also trains saeq's default spec end to end
(harvest reader, its default token budget) and reports held-out FVU and dead latents.
`--matryoshka` fits a Matryoshka BatchTopK SAE instead (the same sizes, prefixes of 128, 512 and
2,048 latents), saeq's beside SAELens's MatryoshkaBatchTopKTrainingSAE, scored at inference
(the threshold each estimated in training).
Usage: python bench/train.py [--tokens 1024000] [--peers sparsify,saelens] [--synthetic]
       [--acceptance] | [--online] | [--matryoshka] | [--hierarchy SEEDS]
Smallest check (no model, seconds): python bench/train.py --synthetic --smoke
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench.harvest_cache, as bench/label.py does

from saeq import keys
from saeq.platform.store import LocalStore

HOOK = "blocks.14.hook_resid_post"
BENCH_JOB = "b" * 32  # the cached harvest lives under this job id in a local store
D_SAE, K, BATCH = 4_608, 32, 4_096
MATRYOSHKA_GROUPS = [128, 384, 1_536, 2_560]  # prefix widths 128, 512, 2,048, 4,608


# --- activations ---------------------------------------------------------------------------------


def harvest(store_dir: Path, n_tokens: int) -> dict:
    """Harvest `n_tokens` of the builtin SmolLM2 at HOOK into a local store, once; the manifest. A
    cached harvest is used only when complete (bench/harvest_cache.py); a half-written one is redone."""
    from bench.harvest_cache import cached_harvest

    store = LocalStore(store_dir)
    return cached_harvest(store, BENCH_JOB, lambda m: m["n_tokens"] >= n_tokens, lambda s: _harvest(s, n_tokens))


def _harvest(store: LocalStore, n_tokens: int) -> dict:
    """Write the shards of a fresh harvest; its manifest (the caller stores it, last)."""
    from saeq.jobs.harvest import harvest_activations
    from saeq.ml.corpus import iter_documents
    from saeq.ml.models import load_model
    from saeq.ml.shards import write_shard_bytes
    from saeq.specs import HarvestSpec

    spec = HarvestSpec(hooks=[HOOK], max_tokens=n_tokens)
    lm = load_model(spec.model, cache_dir=os.path.expanduser("~/.cache/saeq"))
    shards, t0 = [], time.perf_counter()
    for shard in harvest_activations(spec, lm, iter_documents(spec.corpus, seed=spec.seed)):
        data = write_shard_bytes(shard.tensors[HOOK], shard.metadata(HOOK))
        shard_key = keys.harvest_shard(BENCH_JOB, HOOK, shard.index)
        store.put(shard_key, data)
        shards.append(
            {
                "index": shard.index,
                "n_tokens": shard.n_tokens,
                "key": shard_key,
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "meta": shard.metadata(HOOK),
            }
        )
        print(
            f"  shard {shard.index}: {sum(s['n_tokens'] for s in shards):,} tokens, {time.perf_counter() - t0:.0f} s",
            flush=True,
        )
    metas = [s.pop("meta") for s in shards]
    n0 = sum(int(m["n_position0"]) for m in metas)
    n_out = sum(int(m["n_outliers"]) for m in metas)
    tokens = sum(s["n_tokens"] for s in shards)
    # The fields saeq.ml.activations reads, laid out as the worker's harvest manifest lays them out.
    manifest = {
        "format": "saeq.harvest/1",
        "kind": "harvest",
        "job_id": BENCH_JOB,
        "spec": spec.model_dump(mode="json"),
        "d_model": lm.d_model,
        "n_layers": lm.n_layers,
        "context_len": spec.context_len,
        "prepend_bos": spec.prepend_bos,
        "dtype": spec.dtype,
        "n_tokens": tokens,
        "n_contexts": tokens // spec.context_len,
        "hooks": {
            HOOK: {
                "d_model": lm.d_model,
                "dtype": spec.dtype,
                "n_tokens": tokens,
                "shards": shards,
                "sinks": {
                    "rule": f"position == 0 or norm > {spec.sink_norm_factor:g} x median_norm",
                    "median_norm": float(metas[0]["median_norm"]),
                    "norm_factor": spec.sink_norm_factor,
                    "n_position_zero": n0,
                    "n_norm_outliers": n_out,
                    "n_sinks": n0 + n_out,
                },
            }
        },
    }
    return manifest


def synthetic_store(store_dir: Path, n_tokens: int, d: int = 576) -> dict:
    """Planted-dictionary activations written as a harvest, for machines without the model (kept
    while complete and of this size, as `harvest` keeps its own)."""
    from bench.harvest_cache import cached_harvest
    from saeq.dev.synthetic import fake_harvest, planted_dictionary

    def write(store: LocalStore) -> dict:
        x, _ = planted_dictionary(n_features=2 * D_SAE, d=d, n_active=24, n=n_tokens, seed=0)
        return fake_harvest(store, BENCH_JOB, x * 10, context_len=128, shard_tokens=16_384, hook=HOOK)

    # The trainers' processes read it from the store, as they read a real harvest's.
    return cached_harvest(
        LocalStore(store_dir), BENCH_JOB, lambda m: m["n_tokens"] == n_tokens and m["d_model"] == d, write
    )


# --- the three trainers ----------------------------------------------------------------------


class Order:
    """The batches every trainer sees: epoch e visits the training tokens in a random order
    (seeded by e), cut into batches of BATCH; batch i is `table[order[i]]`."""

    def __init__(self, n_rows: int, steps: int):
        per_epoch = n_rows // BATCH
        perms = [
            torch.randperm(n_rows, generator=torch.Generator().manual_seed(e))[: per_epoch * BATCH]
            for e in range(-(-steps // per_epoch))
        ]
        self.idx = torch.cat(perms)[: steps * BATCH].view(steps, BATCH)  # (steps, BATCH)


class Turns:
    """Round robin between the trainers' processes, one step each: only the process holding the
    turn computes, so load from other programs on the machine falls on all of them alike, and
    each one's time is the sum of its turns."""

    def __init__(self, ctx, n: int):
        self.sems = [ctx.Semaphore(0) for _ in range(n)]
        self.done = ctx.Array("b", n)
        self.barrier = ctx.Barrier(n)
        self.me, self.seconds, self._t0 = 0, 0.0, None

    def start(self, me: int) -> None:
        """Called by every process when it is ready; the first step goes to process 0."""
        self.me = me
        self.barrier.wait()
        if me == 0:
            self.sems[0].release()

    def begin(self) -> None:
        self.sems[self.me].acquire()
        self._t0 = time.perf_counter()

    def end(self) -> None:
        if self._t0 is None:
            return
        self.seconds += time.perf_counter() - self._t0
        self._t0 = None
        self._pass()

    def finish(self) -> None:
        """No more steps here: leave the round, then wait for the others to finish theirs."""
        self.end()
        self.done[self.me] = 1
        self._pass()
        self.barrier.wait()

    def _pass(self) -> None:
        n = len(self.sems)
        for j in range(1, n + 1):
            k = (self.me + j) % n
            if not self.done[k]:
                self.sems[k].release()
                return


def train_saeq(table: torch.Tensor, order: Order, spec, turns: Turns):
    from saeq.jobs.train import train_saes

    def batches():
        for i in order.idx:
            turns.end()  # the previous step is done
            turns.begin()
            yield table[i]

    result = train_saes(spec, batches())  # no validation set: measuring it is not training
    turns.finish()
    return result


class _Rows(torch.nn.Module):
    """Stands for "the hooked layer": its output for token ids is their rows of the table. Each
    call starts a training step, and so a turn."""

    def __init__(self, table: torch.Tensor, turns: Turns):
        super().__init__()
        self.table, self.turns, self.armed = table, turns, False

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.armed:
            self.turns.end()
            self.turns.begin()
        return self.table[ids]  # (B, T) -> (B, T, d)


class _TableLM(torch.nn.Module):
    """The least a sparsify Trainer needs of a model: a module to hook at `layers.0`."""

    def __init__(self, table: torch.Tensor, turns: Turns):
        super().__init__()
        self.layers = torch.nn.ModuleList([_Rows(table, turns)])

    base_model = property(lambda self: self)
    device = property(lambda self: torch.device("cpu"))
    dummy_inputs = property(lambda self: {"input_ids": torch.zeros(1, 4, dtype=torch.long)})

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.layers[0](input_ids)


def train_sparsify(table: torch.Tensor, order: Order, spec, turns: Turns):
    """sparsify's own Trainer.fit (hooks, masking, FVU loss, AuxK, decoder projection, its
    linear-decay schedule), on a stand-in model whose hooked layer returns the same batches.
    Adam at saeq's peak lr and the same AuxK settings, so the comparison is of the trainers."""
    from sparsify import SparseCoderConfig, TrainConfig, Trainer

    cfg = spec.saes[0]
    seqs = order.idx.view(-1, 128)  # 32 sequences of 128 tokens make one batch of 4,096
    dataset = [{"input_ids": s} for s in seqs]
    with tempfile.TemporaryDirectory() as tmp:
        tc = TrainConfig(
            SparseCoderConfig(num_latents=D_SAE, k=K),
            batch_size=BATCH // 128,
            optimizer="adam",
            lr=cfg.lr,
            lr_warmup_steps=int(spec.lr_warmup * len(order.idx)),
            auxk_alpha=cfg.auxk_alpha,
            dead_feature_threshold=cfg.dead_window_tokens,
            hookpoints=["layers.0"],
            log_to_wandb=False,
            save_every=10**9,
            save_dir=tmp,
        )
        torch.manual_seed(0)
        lm = _TableLM(table, turns)
        # A list of dicts and a stand-in model: all that sparsify's Trainer reads of a dataset and a model.
        trainer = Trainer(tc, dataset, lm)  # pyright: ignore[reportArgumentType]
        rows = lm.layers[0]
        assert isinstance(rows, _Rows)
        rows.armed = True
        trainer.fit()
        turns.finish()
    return trainer


def train_saelens(table: torch.Tensor, order: Order, spec, turns: Turns):
    """SAELens 6's SAETrainer with its TopK (or Matryoshka BatchTopK) training SAE and its defaults
    (aux loss 1.0, decoder init norm 0.1, rescale by decoder norm), one `step` per batch (the seam
    its fit and its MultiSAETrainer use); activations normalised to mean norm sqrt(d_in)
    ("expected_average_only_in") and the factor folded in at the end, as fit does. Adam at
    saeq's lr, warmup and decay."""
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.matryoshka_batchtopk_sae import (
        MatryoshkaBatchTopKTrainingSAE,
        MatryoshkaBatchTopKTrainingSAEConfig,
    )
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer

    cfg, steps, d_in = spec.saes[0], len(order.idx), table.shape[1]
    torch.manual_seed(0)
    if cfg.architecture == "matryoshka_batchtopk":  # its defaults too (rescale, aux loss 1.0)
        widths = torch.tensor(MATRYOSHKA_GROUPS).cumsum(0).tolist()
        mcfg = MatryoshkaBatchTopKTrainingSAEConfig(
            d_in=d_in, d_sae=D_SAE, k=K, matryoshka_widths=widths, normalize_activations="expected_average_only_in"
        )
        sae = MatryoshkaBatchTopKTrainingSAE(mcfg)
    else:
        sae = TopKTrainingSAE(
            TopKTrainingSAEConfig(d_in=d_in, d_sae=D_SAE, k=K, normalize_activations="expected_average_only_in")
        )
    tc = SAETrainerConfig(
        total_training_samples=steps * BATCH,
        train_batch_size_samples=BATCH,
        lr=cfg.lr,
        lr_warm_up_steps=int(spec.lr_warmup * steps),
        lr_decay_steps=int(spec.lr_decay * steps),
        lr_end=0.0,
        dead_feature_window=max(1, cfg.dead_window_tokens // BATCH),
        logger=LoggingConfig(log_to_wandb=False),
    )
    trainer = SAETrainer(tc, sae, data_provider=iter(()))
    trainer.activation_scaler.scaling_factor = d_in**0.5 / float(table[order.idx[0]].norm(dim=1).mean())
    for i in order.idx:
        turns.begin()
        trainer.step(table[i])
        trainer.n_training_steps += 1
        turns.end()
    turns.finish()
    scaling_factor = trainer.activation_scaler.scaling_factor
    assert scaling_factor is not None  # fit() estimated it (normalize_activations="expected_average_only_in")
    sae.fold_activation_norm_scaling_factor(scaling_factor)
    return trainer


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


TRAINERS = {"saeq": train_saeq, "sparsify": train_sparsify, "SAELens": train_saelens}


def saelens_inference(training_sae) -> Any:
    """SAELens's inference SAE of a training one, as it saves it (a BatchTopK: JumpReLU at the
    threshold estimated in training)."""
    from sae_lens import SAE

    with tempfile.TemporaryDirectory() as tmp:
        training_sae.save_inference_model(tmp)
        return SAE.load_from_disk(tmp).eval()


def run_one(name: str, me: int, turns: Turns, args, results) -> None:
    """A trainer's process: the shared batches, its turns of training, its held-out figures."""
    import traceback

    from saeq.jobs.train import harvest_data
    from saeq.platform.store import LocalStore
    from saeq.specs import ActivationsRef, SaeConfig, TrainSpec

    devnull = os.open(os.devnull, os.O_WRONLY)  # the peers' progress bars and prints
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
        root = Path(args.cache) / ("synthetic" if args.synthetic else "store")
        manifest = json.loads(LocalStore(root).get(f"jobs/{BENCH_JOB}/manifest.json"))
        arch = {"architecture": "matryoshka_batchtopk", "matryoshka_groups": MATRYOSHKA_GROUPS}
        spec = TrainSpec(
            activations=ActivationsRef(job_id=BENCH_JOB, hook=HOOK),
            saes=[SaeConfig(d_sae=D_SAE, k=K, **(arch if args.matryoshka else {}))],
            total_tokens=args.tokens,
            batch_size=BATCH,
            checkpoint_every_tokens=None,
        )
        data = harvest_data(spec, manifest, LocalStore(root).get)
        table, val = data.train_rows(), data.validation()
        order = Order(table.shape[0], args.tokens // BATCH)
        turns.start(me)
        trained = TRAINERS[name](table, order, spec, turns)
        if name == "saeq":
            sae = trained.saes["sae0"]
            encode, decode = sae.encode, sae.decode
        elif name == "sparsify":
            coder = next(iter(trained.saes.values()))

            def encode(x):
                top = coder.encode(x)
                return top.top_acts.new_zeros(x.shape[0], D_SAE).scatter_(1, top.top_indices, top.top_acts)

            def decode(a):
                return a @ coder.W_dec + coder.b_dec
        else:
            sl = saelens_inference(trained.sae) if args.matryoshka else trained.sae.eval()
            encode, decode = sl.encode, sl.decode
        f, never = scores(encode, decode, val)
        results.put(
            {
                "trainer": name,
                "tokens_per_s": args.tokens / turns.seconds,
                "seconds": turns.seconds,
                "fvu": f,
                "never_fired": never,
                "validation_tokens": val.shape[0],
            }
        )
    except BaseException:
        results.put({"trainer": name, "error": traceback.format_exc()})
        turns.barrier.abort()
        raise


def compare(args, names: list[str], target=None) -> list[dict]:
    """Every trainer in its own fresh process (none inherits another's process state: sparsify's
    fit sets the float32 matmul precision, saeq tunes glibc's malloc), taking turns step by step.
    `target(name, me, turns, args, results)` trains one (default: this script's run_one)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    turns, results = Turns(ctx, len(names)), ctx.Queue()
    target = target or run_one
    procs = [ctx.Process(target=target, args=(n, i, turns, args, results)) for i, n in enumerate(names)]
    for p in procs:
        p.start()
    rows = {}
    for _ in names:
        r = results.get()
        if "error" in r:
            for p in procs:
                p.terminate()
            raise SystemExit(f"{r['trainer']} failed:\n{r['error']}")
        rows[r["trainer"]] = r
    for p in procs:
        p.join()
    return [rows[n] for n in names]


def acceptance(manifest: dict, store) -> dict:
    """saeq's default TrainSpec on the harvest, as a user would run it."""
    from saeq.jobs.train import train_from_harvest
    from saeq.specs import ActivationsRef, TrainSpec

    spec = TrainSpec(activations=ActivationsRef(job_id=BENCH_JOB, hook=HOOK), checkpoint_every_tokens=None)
    t0 = time.perf_counter()
    result = train_from_harvest(
        spec,
        manifest,
        store.get,
        progress_every_s=30,
        on_progress=lambda p: print(
            f"  {p.tokens:,} tokens, {p.tokens_per_s:,.0f} tokens/s, train FVU {p.saes['sae0']['fvu']:.3f}", flush=True
        ),
    )
    m = result.metrics["sae0"]
    return {
        "tokens": result.tokens,
        "wall_s": time.perf_counter() - t0,
        "fvu": m.fvu,
        "dead": m.dead_fraction,
        "never_fired": m.dead_fraction_validation,
        "l0": m.l0,
        "epochs": result.data["epochs"],
        "train_tokens": result.data["train_tokens_available"],
        "validation_tokens": m.validation_tokens,
        "spec": spec.saes[0].model_dump(),
    }


def data_parallel(n: int, tokens: int) -> None:
    """--data-parallel N: saeq's TopK spec trained on the same global batches (random activations,
    d_in 576) by one process and by N data-parallel ranks (NCCL on N GPUs when there are, else gloo
    on N CPU processes); tokens/s of each, and how far apart their weights end."""
    from saeq.jobs.train import train_saes
    from saeq.specs import SaeConfig, TrainSpec

    gpus = torch.cuda.device_count() >= n
    devices = [f"cuda:{i}" for i in range(n)] if gpus else ["cpu"] * n
    steps = max(2, tokens // BATCH)
    gen = torch.Generator().manual_seed(0)
    data = [torch.randn(BATCH, 576, generator=gen) for _ in range(steps)]
    spec = TrainSpec.model_validate(
        {
            "activations": {"job_id": BENCH_JOB, "hook": HOOK},
            "saes": [SaeConfig(d_sae=D_SAE, k=K)],
            "total_tokens": steps * BATCH,
            "batch_size": BATCH,
            "checkpoint_every_tokens": None,
            "gpus": n,
            "parallel": "data",
        }
    )
    print(f"data-parallel: {steps} steps of {BATCH:,} tokens, TopK d_sae={D_SAE} k={K}, ranks on {devices}", flush=True)
    one = train_saes(spec, data, device=devices[0])
    t0 = time.perf_counter()
    ranks = train_saes(spec, data, devices=devices)
    wall = time.perf_counter() - t0  # spawning and joining the ranks included
    pairs = [(ranks.saes["sae0"].state_dict()[k].cpu(), w.cpu()) for k, w in one.saes["sae0"].state_dict().items()]
    # Largest element apart (of the tensor's largest), and whole tensors apart (norm of the difference):
    # float sums in another order flip a few near-tied TopK choices, and Adam's first steps move
    # a weight by ~lr whatever its gradient's size, so single elements differ more than tensors.
    diff = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)) for a, b in pairs)
    diff_norm = max(float((a - b).norm() / b.norm().clamp_min(1e-12)) for a, b in pairs)
    print(f"one process: {one.tokens / one.wall_s:,.0f} tokens/s")
    print(
        f"{n} ranks: {ranks.tokens / ranks.wall_s:,.0f} tokens/s training ({ranks.tokens / wall:,.0f} with the start), "
        f"weights apart: {diff_norm:.1e} (norm of the difference / norm), {diff:.1e} (largest element / largest)"
    )


def online_beside_stored(manifest: dict, store, tokens: int) -> None:
    """--online: the same TopK spec trained on the stored harvest's shards and online (SmolLM2's
    forward pass fused with training, the same contexts: same corpus, seed and packing), one after
    the other; tokens/s end to end (the forward pass included online) and held-out FVU of each."""
    from saeq.jobs.train import train_from_harvest
    from saeq.jobs.train_online import train_online
    from saeq.ml.corpus import iter_documents
    from saeq.ml.models import load_model
    from saeq.specs import ActivationsRef, OnlineActivations, SaeConfig, TrainSpec

    # Chunks of 8,192 tokens and 4,096 held out (defaults: 65,536 and 16,384): a short run then
    # forwards few tokens it never trains on, and a one-shard harvest leaves tokens to train on.
    fields = {
        "saes": [SaeConfig(d_sae=D_SAE, k=K)],
        "total_tokens": tokens,
        "batch_size": BATCH,
        "shuffle_tokens": 8192,
        "validation_tokens": 4096,
    }
    stored_spec = TrainSpec(activations=ActivationsRef(job_id=BENCH_JOB, hook=HOOK), **fields)
    online = OnlineActivations(source="online", hook=HOOK)  # the defaults harvest() ran with
    online_spec = TrainSpec(activations=online, **fields)
    print(f"online beside stored: {tokens:,} tokens, TopK d_sae={D_SAE} k={K} batch={BATCH}, chunks 8,192", flush=True)
    t0 = time.perf_counter()
    stored = train_from_harvest(stored_spec, manifest, store.get)
    stored_s = time.perf_counter() - t0
    lm = load_model(online.model, cache_dir=os.path.expanduser("~/.cache/saeq"))
    t0 = time.perf_counter()
    fused = train_online(online_spec, lm, lambda: iter_documents(online.corpus, seed=online.seed))
    online_s = time.perf_counter() - t0  # held-out contexts' forward pass included
    print(f"{'source':8s} {'tokens/s':>9s} {'FVU':>7s}  (end to end: reading, or forward pass, and training)")
    for name, r, wall in (("stored", stored, stored_s), ("online", fused, online_s)):
        print(f"{name:8s} {r.tokens / wall:9,.0f} {r.metrics['sae0'].fvu:7.4f}")


def hierarchy_recovery(seeds: int, steps: int) -> None:
    """Issue 20's acceptance 1: planted parent/child features (saeq.ml.synthetic), saeq's BatchTopK
    beside its Matryoshka BatchTopK at the same k, scored by saeq.checks.recovery (SynthSAEBench's
    MCC and F1) on held-out tokens, one row per seed of the synthetic model."""
    from saeq.checks.recovery import score_recovery
    from saeq.jobs.train import train_saes
    from saeq.ml.synthetic import SyntheticConfig, SyntheticModel
    from saeq.specs import ActivationsRef, SaeConfig, TrainSpec

    arches = {"batchtopk": {}, "matryoshka_batchtopk": {"matryoshka_groups": [16, 112]}}  # 16 parents first
    print(f"128 features (16 parents x 4 children), d_model 48, d_sae 128, k 4, {steps} steps of 1,024 tokens")
    print(f"{'seed':>4s} {'architecture':22s} {'MCC':>6s} {'F1':>6s} {'L0':>5s} {'true L0':>7s} {'FVU':>6s}")
    for seed in range(seeds):
        cfg = SyntheticConfig(
            n_features=128,
            d_model=48,
            zipf_exponent=0.5,
            max_prob=0.4,
            min_prob=0.005,
            n_parents=16,
            n_children=4,
            magnitude_std=0.3,
            noise_std=0.01,
            seed=seed,
        )
        model = SyntheticModel(cfg)
        held_out = [(b.acts_BD, b.codes_BF) for b in model.batches(4096, 2, seed=99)]
        for arch, extra in arches.items():
            spec = TrainSpec(
                activations=ActivationsRef(job_id=BENCH_JOB, hook=HOOK),
                saes=[SaeConfig(architecture=arch, d_sae=128, k=4, **extra)],
                total_tokens=steps * 1024,
                batch_size=1024,
                checkpoint_every_tokens=None,
            )
            sae = train_saes(spec, (b.acts_BD for b in model.batches(1024, steps, seed=1))).saes["sae0"]
            r = score_recovery(sae.encode, sae.decode, sae.W_dec, model.features_FD, held_out)
            print(
                f"{seed:4d} {arch:22s} {r.mcc:6.3f} {r.f1:6.3f} {r.l0:5.2f} {r.true_l0:7.2f} {r.fvu:6.3f}", flush=True
            )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=250 * BATCH, help="training tokens per trainer")
    ap.add_argument(
        "--harvest-tokens", type=int, default=17 * 16_384, help="tokens to harvest (the last 16,384 are held out)"
    )
    ap.add_argument("--peers", default="sparsify,saelens")
    ap.add_argument("--synthetic", action="store_true", help="planted-dictionary activations instead of SmolLM2's")
    ap.add_argument(
        "--acceptance",
        action="store_true",
        help="also train saeq's default TrainSpec end to end and report FVU and dead latents",
    )
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/saeq/bench"))
    ap.add_argument("--harvest-only", action="store_true")
    ap.add_argument(
        "--online", action="store_true", help="only: stored-shard training beside online (harvest+train fused)"
    )
    ap.add_argument(
        "--data-parallel", type=int, default=0, metavar="N", help="only: one process beside N data-parallel ranks"
    )
    ap.add_argument(
        "--matryoshka", action="store_true", help="Matryoshka BatchTopK: saeq beside SAELens (sparsify has none)"
    )
    ap.add_argument(
        "--hierarchy", type=int, default=0, metavar="SEEDS", help="only: MCC/F1 of BatchTopK and Matryoshka, planted"
    )
    ap.add_argument("--smoke", action="store_true", help="tiniest sizes (two batches each): does it run")
    args = ap.parse_args()
    if args.smoke:
        args.tokens, args.harvest_tokens = 2 * BATCH, 16_384 + 2 * BATCH  # sinks leave < 2 batches
    if args.data_parallel:
        return data_parallel(args.data_parallel, args.tokens)
    if args.hierarchy:
        return hierarchy_recovery(args.hierarchy, 2 if args.smoke else 300)

    root = Path(args.cache) / ("synthetic" if args.synthetic else "store")
    manifest = synthetic_store(root, args.harvest_tokens) if args.synthetic else harvest(root, args.harvest_tokens)
    if args.harvest_only:
        return
    if args.online:
        from saeq.platform.store import LocalStore

        return online_beside_stored(manifest, LocalStore(root), args.tokens)

    rule = f"Matryoshka BatchTopK (groups {MATRYOSHKA_GROUPS})" if args.matryoshka else "TopK"
    print(
        f"{'synthetic' if args.synthetic else 'SmolLM2-135M-Instruct ' + HOOK}, "
        f"{manifest['n_tokens']:,} tokens harvested; {rule} d_sae={D_SAE} k={K} batch={BATCH}; "
        f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, torch {torch.__version__}",
        flush=True,
    )
    peers = ("SAELens",) if args.matryoshka else ("sparsify", "SAELens")
    names = ["saeq"] + [p for p in peers if p.lower() in args.peers.lower().split(",")]
    rows = compare(args, names)
    print(f"\n{args.tokens:,} training tokens each; FVU on {rows[0]['validation_tokens']:,} held-out ordinary tokens:")
    print(f"{'trainer':10s} {'tokens/s':>9s} {'FVU':>7s} {'never firing':>13s}")
    for r in rows:
        print(f"{r['trainer']:10s} {r['tokens_per_s']:9,.0f} {r['fvu']:7.4f} {r['never_fired']:13.1%}")
    base = {r["trainer"]: r["tokens_per_s"] for r in rows}
    for peer in ("sparsify", "SAELens"):
        if peer in base:
            print(f"saeq / {peer}: {base['saeq'] / base[peer]:.2f}x tokens/s")
    if args.acceptance:
        from saeq.platform.store import LocalStore

        a = acceptance(manifest, LocalStore(root))
        print(
            f"\nacceptance (default TrainSpec): {a['tokens']:,} tokens "
            f"({a['epochs']:.1f} epochs of {a['train_tokens']:,}) in {a['wall_s']:.0f} s: "
            f"FVU {a['fvu']:.4f} on {a['validation_tokens']:,} held-out tokens, L0 {a['l0']:.1f}, "
            f"dead {a['dead']:.1%}, never firing on held-out {a['never_fired']:.1%}"
        )


if __name__ == "__main__":
    main()
