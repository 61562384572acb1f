"""The two trainers of bench/transcoder.py, each in its own process, taking turns step by step:
saeq's TopK skip-transcoder (train_saes on [x | y] rows) and sparsify's own Trainer.fit with
SparseCoderConfig(transcode=True, skip_connection=True), on the same batches in the same order."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch

from bench import train as train_bench
from bench.train import Turns
from saeq import keys
from saeq.platform.store import LocalStore

COMPARE_ROWS = 8_192  # held-out rows on which sparsify's outputs of the export are compared with saeq's

# --- the shared batches --------------------------------------------------------------------------


def order(n_rows: int, steps: int, batch: int) -> torch.Tensor:
    """(steps, batch) row indices: epoch e visits the training rows in a random order seeded by e."""
    per_epoch = n_rows // batch
    perms = [
        torch.randperm(n_rows, generator=torch.Generator().manual_seed(e))[: per_epoch * batch]
        for e in range(-(-steps // per_epoch))
    ]
    return torch.cat(perms)[: steps * batch].view(steps, batch)


def train_spec(cfg: dict):
    from saeq.specs import ActivationsRef, SaeConfig, TrainSpec

    return TrainSpec(
        activations=ActivationsRef(job_id=cfg["job"], hook=cfg["hook"], target_hook=cfg["target"]),
        saes=[SaeConfig(name="tc", architecture="topk_skip_transcoder", d_sae=cfg["d_sae"], k=cfg["k"])],
        total_tokens=cfg["tokens"],
        batch_size=cfg["batch"],
        validation_tokens=cfg["validation_tokens"],
        checkpoint_every_tokens=None,
    )


# --- the two trainers -----------------------------------------------------------------------------


def train_saeq(table: torch.Tensor, idx: torch.Tensor, spec, turns: Turns):
    """saeq's train_saes on [x | y] rows: its shipped recipe (the TrainSpec defaults)."""
    from saeq.jobs.train import train_saes

    def batches():
        for i in idx:
            turns.end()  # the previous step is done
            turns.begin()
            yield table[i]

    result = train_saes(spec, batches())  # no validation set: measuring it is not training
    turns.finish()
    sae = result.saes["tc"]
    return sae, sae.transcode


class _PairLayer(torch.nn.Module):
    """Stands for "the MLP": called on the batch's inputs, it returns their targets. Each call
    starts a training step, and so a turn."""

    def __init__(self, y_table: torch.Tensor, turns: Turns):
        super().__init__()
        self.y_table, self.turns, self.armed = y_table, turns, False
        self.ids: torch.Tensor | None = None  # (B, T) rows of this step, set by _PairLM

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        if self.armed:  # not while the Trainer sizes the coders on the model's dummy inputs
            self.turns.end()
            self.turns.begin()
        return self.y_table[self.ids]  # (B, T, d): the targets of the rows whose inputs x_BTD are


class _PairLM(torch.nn.Module):
    """The least sparsify's Trainer needs of a model: `layers.0` reads x and returns y (a
    transcoder's hook sees the module's input and output)."""

    def __init__(self, x_table: torch.Tensor, y_table: torch.Tensor, turns: Turns):
        super().__init__()
        self.x_table = x_table
        self.layers = torch.nn.ModuleList([_PairLayer(y_table, turns)])

    base_model = property(lambda self: self)
    device = property(lambda self: torch.device("cpu"))
    dummy_inputs = property(lambda self: {"input_ids": torch.zeros(1, 4, dtype=torch.long)})

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        layer = self.layers[0]
        assert isinstance(layer, _PairLayer)
        layer.ids = input_ids
        return layer(self.x_table[input_ids])  # (B, T) -> (B, T, d)


def train_sparsify(table: torch.Tensor, idx: torch.Tensor, spec, turns: Turns):
    """sparsify's own Trainer.fit for a skip-transcoder (its FVU loss, AuxK, init of the biases from
    the first batch, zero decoder), Adam at saeq's peak lr with the same AuxK settings and warmup."""
    from sparsify import SparseCoderConfig, TrainConfig, Trainer

    cfg, d = spec.saes[0], table.shape[1] // 2
    x_table, y_table = table[:, :d].contiguous(), table[:, d:].contiguous()
    context = 128 if idx.shape[1] % 128 == 0 else idx.shape[1]
    dataset = [{"input_ids": s} for s in idx.reshape(-1, context)]  # a batch = batch // context sequences
    with tempfile.TemporaryDirectory() as tmp:
        tc = TrainConfig(
            SparseCoderConfig(num_latents=cfg.d_sae, k=cfg.k, transcode=True, skip_connection=True),
            batch_size=idx.shape[1] // context,
            optimizer="adam",
            lr=cfg.lr,
            lr_warmup_steps=int(spec.lr_warmup * len(idx)),
            auxk_alpha=cfg.auxk_alpha,
            dead_feature_threshold=cfg.dead_window_tokens,
            hookpoints=["layers.0"],
            log_to_wandb=False,
            save_every=10**9,
            save_dir=tmp,
        )
        torch.manual_seed(0)
        # A list of dicts and a stand-in model: all that sparsify's Trainer reads of a dataset and a model.
        lm = _PairLM(x_table, y_table, turns)
        trainer = Trainer(tc, dataset, lm)  # pyright: ignore[reportArgumentType]
        layer = lm.layers[0]
        assert isinstance(layer, _PairLayer)
        layer.armed = True
        trainer.fit()
        turns.finish()
    coder = next(iter(trainer.saes.values())).eval()
    return coder, lambda x: coder(x).sae_out


TRAINERS = {"saeq": train_saeq, "sparsify": train_sparsify}


@torch.no_grad()
def fvu(predict, val: torch.Tensor, chunk: int = 4096) -> float:
    """sum ||y - y_hat||^2 / sum ||y - mean(y)||^2 over held-out [x | y] rows (saeq's definition)."""
    d = val.shape[1] // 2
    err = sum(float((c[:, d:] - predict(c[:, :d])).double().pow(2).sum()) for c in val.split(chunk))
    y = val[:, d:].double()
    return err / float((y - y.mean(0)).pow(2).sum())


def run_one(name: str, me: int, turns: Turns, cfg: dict, results) -> None:
    """A trainer's process: the shared batches, its turns of training, its held-out FVU; saeq's
    also writes its exports and its outputs on held-out inputs for the parent to compare."""
    import traceback

    from saeq.jobs.train import harvest_data

    devnull = os.open(os.devnull, os.O_WRONLY)  # the peers' progress bars and prints
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    try:
        store = LocalStore(cfg["store"])
        manifest = json.loads(store.get(keys.manifest(cfg["job"])))
        spec = train_spec(cfg)
        data = harvest_data(spec, manifest, store.get)
        table, val = data.train_rows(), data.validation()  # (N, 2d) [x | y], ordinary tokens only
        idx = order(table.shape[0], cfg["tokens"] // cfg["batch"], cfg["batch"])
        turns.start(me)
        model, predict = TRAINERS[name](table, idx, spec, turns)
        row = {"trainer": name, "tokens_per_s": idx.numel() / turns.seconds, "seconds": turns.seconds}
        row |= {"fvu": fvu(predict, val), "validation_tokens": val.shape[0], "train_tokens": table.shape[0]}
        if name == "saeq":
            from saeq.ml.sae import save_sae

            out = Path(cfg["out"])
            meta = {"hook_name": cfg["hook"], "hook_name_out": cfg["target"], "model_name": cfg["model"]}
            save_sae(model, out / "saeq", "saelens", meta)  # saeq's own file (SAELens has no TopK transcoder)
            save_sae(model, out / "sparsify", "sparsify", meta)
            x = val[:COMPARE_ROWS, : model.d_in]
            torch.save({"x": x, "y_hat": predict(x)}, out / "saeq_outputs.pt")
        results.put(row)
    except BaseException:
        results.put({"trainer": name, "error": traceback.format_exc()})
        turns.barrier.abort()
        raise


def compare(cfg: dict, names: list[str]) -> list[dict]:
    """Each trainer in its own fresh process, taking turns step by step (bench/train.py's compare)."""
    return train_bench.compare(cfg, names, target=run_one)
