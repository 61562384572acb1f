"""Train sparse autoencoders on a stream of activation batches: every batch feeds every SAE.

`train_saes` neither knows nor cares where batches come from; `train_from_harvest` reads them
from a harvest (saeq.ml.activations) and adds what the sink rule left out to the result. Training
is resumable: a `TrainState` taken every `checkpoint_every_tokens` holds weights, optimiser
moments, dead-latent counters and the data position, and a run resumed from it ends with the
same weights as one never interrupted (same batches, same arithmetic).

FVU (fraction of variance unexplained), everywhere in saeq: sum_i ||x_i - x_hat_i||^2 /
sum_i ||x_i - mean(x)||^2 over a set of tokens; the result's figures use the held-out ordinary
tokens (attention sinks excluded, see saeq.ml.sinks) with mean(x) taken over that set.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from saeq.errors import Cancelled, InvalidSpec, Preempted
from saeq.jobs.train_seeds import seed_spread
from saeq.ml.activations import Batch, DataPosition, HarvestData
from saeq.ml.distributed import DataGroup
from saeq.ml.sae import SparseAutoencoder
from saeq.ml.sae.crosscoder import TopKCrosscoder, layer_report
from saeq.ml.training import (  # SaeMetrics and measure: importable from here as before the split
    SaeMetrics,
    Trainee,
    build_trainees,
    keep_freed_memory,
    lr_factor,
    measure,
)
from saeq.specs import ActivationsRef, TrainSpec
from saeq.specs.train_seeds import sae_runs

STATE_FORMAT = "saeq.train-state/1"


# --- what goes in and out -----------------------------------------------------------------------


@dataclass
class TrainProgress:
    step: int
    tokens: int
    total_tokens: int
    tokens_per_s: float
    """Training throughput since this run (or resumption) started."""
    epoch: int | None
    """Epoch of the data the last batch came from (0-based), when the batches say."""
    saes: dict[str, dict[str, float]]
    """Per SAE, averaged over the steps since the last report: loss, mse, fvu, l0, lr; and
    dead_fraction, dense_fraction now."""


@dataclass
class TrainResult:
    saes: dict[str, SparseAutoencoder]
    """The trained SAEs, taking raw activations (the training scale is folded in), eval mode."""
    metrics: dict[str, SaeMetrics]
    tokens: int
    """Tokens trained on (token-steps, summed over epochs)."""
    steps: int
    wall_s: float
    """Training time of this run, resumptions included."""
    input_scale: float
    """Factor the activations were multiplied by while training (folded into the weights)."""
    data: dict = field(default_factory=dict)
    """What the batches' source reports: epochs, ordinary tokens, sinks left out."""
    seed_spread: dict = field(default_factory=dict)
    """With `spec.seeds`: per configuration, each final figure's spread over its seeds
    (saeq.jobs.train_seeds.seed_spread); empty without."""
    layers: dict = field(default_factory=dict)
    """Crosscoders: per SAE, FVU per layer and overall, L0 and the per-layer decoder norms on the
    held-out tokens (saeq.ml.sae.crosscoder.layer_report); empty for other SAEs."""
    recovery: dict = field(default_factory=dict)
    """On a synthetic harvest: each SAE's recovery of the true features (saeq.jobs.train_recovery);
    empty otherwise."""

    def to_dict(self) -> dict:
        """Everything but the weights, JSON-able."""
        return (
            {
                "tokens": self.tokens,
                "steps": self.steps,
                "wall_s": self.wall_s,
                "input_scale": self.input_scale,
                "data": self.data,
                "saes": {n: _figures(m) for n, m in self.metrics.items()},
            }
            | ({"seed_spread": self.seed_spread} if self.seed_spread else {})
            | ({"layers": self.layers} if self.layers else {})
            | ({"recovery": self.recovery} if self.recovery else {})
        )


def _figures(m: SaeMetrics) -> dict:
    """One SAE's held-out figures, JSON-able: its intervals as Estimate dicts."""
    return asdict(m) | {"intervals": {k: e.model_dump() for k, e in m.intervals.items()}}


@dataclass
class TrainState:
    """Everything a resumed run needs to continue exactly where the checkpoint was taken."""

    spec: dict
    step: int
    tokens: int
    input_scale: float
    data_position: dict | None
    """DataPosition.to_dict() after the last batch trained on (None: the batches did not say)."""
    saes: dict[str, dict]
    """Per SAE: model (state dict, training scale), optimizer, tokens_since_fired, fire_rate."""
    rng: Tensor
    wall_s: float

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        torch.save({"format": STATE_FORMAT, **asdict(self)}, buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> TrainState:
        d = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        if d.pop("format", None) != STATE_FORMAT:
            raise ValueError("not a saeq training checkpoint")
        return cls(**d)


# --- the loop -----------------------------------------------------------------------------------


def sae_names(spec: TrainSpec) -> list[str]:
    """The trained SAEs' names: each of `spec.saes` once, or once per seed of `spec.seeds`."""
    return [run.name for run in sae_runs(spec)]


def train_saes(
    spec: TrainSpec,
    batches: Iterable[Batch | Tensor],
    *,
    validation: Tensor | None = None,
    validation_contexts: Tensor | None = None,
    device: str = "cpu",
    devices: list[str] | None = None,
    group: DataGroup | None = None,
    on_progress: Callable[[TrainProgress], None] = lambda p: None,
    should_stop: Callable[[], bool] = lambda: False,
    resume: TrainState | None = None,
    on_checkpoint: Callable[[TrainState], None] = lambda s: None,
    progress_every_s: float = 2.0,
    should_yield: Callable[[], bool] = lambda: False,
) -> TrainResult:
    """Train the SAEs `spec.saes` on `batches` ((B, d_in) activations, or Batch with the data
    position after it) until `spec.total_tokens`. With `resume`, `batches` must start where
    `resume.data_position` says. Raises Cancelled when `should_stop()` turns true.

    `should_yield()` true (a preemption): after the current step, `on_checkpoint` gets the state
    at that step (unless nothing was trained since `resume`) and Preempted is raised, so a run
    resumed from that state goes on exactly. A data-parallel group has no such safe point: it
    stops at `should_stop`, and resumes from its last periodic checkpoint.

    `validation_contexts` (N_val,): the context each held-out row comes from, the unit the
    figures' intervals resample (None: blocks of contiguous rows; saeq.ml.held_out).

    `devices`: SAE i trains on devices[i % len(devices)] (None: [device]), every batch copied
    once to each. `group`: this process is one rank of a data-parallel group (saeq.ml.distributed):
    `batches` are the global batches, of which it trains on its share; only rank 0 checkpoints."""
    devices = devices or [device]
    if spec.parallel == "data" and len(devices) > 1 and group is None:
        from saeq.jobs.train_parallel import train_data_parallel  # its ranks come back here, each with a group

        return train_data_parallel(
            spec,
            batches,
            devices=devices,
            validation=validation,
            validation_contexts=validation_contexts,
            on_progress=on_progress,
            should_stop=lambda: should_stop() or should_yield(),
            resume=resume,
            on_checkpoint=on_checkpoint,
            progress_every_s=progress_every_s,
        )
    it: Iterator = iter(batches)
    total_steps = math.ceil(spec.total_tokens / spec.batch_size)
    autocast = _autocast(devices[0])
    run = _start(spec, sae_names(spec), it, devices, resume)
    trainees, scale, step, tokens, pending = run.trainees, run.scale, run.step, run.tokens, run.pending

    position = resume.data_position if resume is not None else None
    epoch = DataPosition.from_dict(position).epoch if position else None
    t_start = time.perf_counter()
    tokens_at_start, last_report = tokens, t_start
    next_checkpoint = _next_multiple(tokens, spec.checkpoint_every_tokens)

    while tokens < spec.total_tokens:
        if group is None and should_yield():
            if tokens > tokens_at_start:  # else the state resumed from (or none) is where it stands
                on_checkpoint(
                    _state(spec, step, tokens, scale, position, trainees, run.wall0 + time.perf_counter() - t_start)
                )
            raise Preempted("training yielded", tokens=tokens, step=step)
        stop = should_stop()
        if stop if group is None else group.any(stop, devices[0]):
            raise Cancelled("training cancelled")
        item = pending.pop() if pending else next(it, None)
        if item is None:
            raise InvalidSpec("the activations ran out before total_tokens", field="spec.total_tokens")
        acts, B = _acts(item), _acts(item).shape[0]
        xs = _to_devices(group.shard(acts) if group is not None else acts, devices, scale)
        if isinstance(item, Batch):
            position, epoch = item.position.to_dict(), item.position.epoch
        lr_f = lr_factor(spec, step, total_steps)
        sparsity = min(1.0, (step + 1) / (spec.sparsity_warmup * total_steps)) if spec.sparsity_warmup else 1.0
        for t in trainees:
            t.step(xs[t.device], t.cfg.lr * lr_f, sparsity, autocast, group, B)
        step += 1
        tokens += B

        now = time.perf_counter()
        done = tokens >= spec.total_tokens
        if now - last_report >= progress_every_s or done:
            rate = (tokens - tokens_at_start) / max(now - t_start, 1e-9)
            on_progress(
                TrainProgress(step, tokens, spec.total_tokens, rate, epoch, {t.name: t.report() for t in trainees})
            )
            last_report = now
        if next_checkpoint is not None and tokens >= next_checkpoint and not done:
            wall_s = run.wall0 + now - t_start
            if group is None or group.rank == 0:
                on_checkpoint(_state(spec, step, tokens, scale, position, trainees, wall_s))
            next_checkpoint = _next_multiple(tokens, spec.checkpoint_every_tokens)

    wall = run.wall0 + time.perf_counter() - t_start
    saes, metrics = {}, {}
    for t in trainees:
        sae = t.sae
        sae.fold_input_scale_(scale)
        sae.eval()
        saes[t.name] = sae
        metrics[t.name] = measure(
            sae, validation, name=t.name, dead_fraction=t.dead_fraction(), device=t.device, contexts=validation_contexts
        )
    return TrainResult(saes, metrics, tokens, step, wall, scale, seed_spread=seed_spread(spec, metrics))


def _to_devices(acts_BD: Tensor, devices: list[str], scale: float) -> dict[str, Tensor]:
    """The batch (scaled) on each device, copied there once however many SAEs train on it."""
    xs = {}
    for d in dict.fromkeys(devices):
        x = acts_BD.to(d, torch.float32, non_blocking=True)
        xs[d] = x * scale if scale != 1.0 else x
    return xs


def _autocast(device: str):
    """bf16 autocast on CUDA (with TF32 matmuls); on CPU, glibc keeps freed memory (see
    keep_freed_memory); nothing else elsewhere."""
    cuda = device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif device == "cpu":
        keep_freed_memory()
    return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()


@dataclass
class _Start:
    """Where a run starts: its SAEs, the input scale, the step and token counts, the training time
    of earlier attempts, and the batch read to size the SAEs (trained on first)."""

    trainees: list[Trainee]
    scale: float
    step: int
    tokens: int
    wall0: float
    pending: list


def _start(spec: TrainSpec, names: list[str], it: Iterator, devices: list[str], resume: TrainState | None) -> _Start:
    if resume is None:
        first = next(it, None)
        if first is None:
            raise InvalidSpec("no activations to train on", field="spec.activations")
        d_in = _acts(first).shape[1]
        first_x = _acts(first).to(devices[0], torch.float32)  # the whole (global) batch, on every rank
        if getattr(spec.activations, "target_hook", None) is not None:
            d_in //= 2  # [input | target] rows of two equally wide hooks: transcoders read the first half
        scale = math.sqrt(d_in) / float(first_x.norm(dim=1).mean()) if spec.normalize_activations else 1.0
        return _Start(build_trainees(spec, names, d_in, devices, first_x * scale), scale, 0, 0, 0.0, [first])
    if resume.spec != spec.model_dump(mode="json"):
        raise InvalidSpec("the checkpoint was taken by a job with a different spec")
    d_in = next(iter(resume.saes.values()))["model"]["W_enc"].shape[0]
    trainees = build_trainees(spec, names, d_in, devices, None)
    for t in trainees:
        t.load(resume.saes[t.name])
    torch.set_rng_state(resume.rng)
    return _Start(trainees, resume.input_scale, resume.step, resume.tokens, resume.wall_s, [])


def _state(
    spec: TrainSpec,
    step: int,
    tokens: int,
    scale: float,
    position: dict | None,
    trainees: list[Trainee],
    wall_s: float,
) -> TrainState:
    return TrainState(
        spec=spec.model_dump(mode="json"),
        step=step,
        tokens=tokens,
        input_scale=scale,
        data_position=position,
        saes={t.name: t.state() for t in trainees},
        rng=torch.get_rng_state(),
        wall_s=wall_s,
    )


def _acts(item: Batch | Tensor) -> Tensor:
    return item.acts if isinstance(item, Batch) else item


def _next_multiple(tokens: int, every: int | None) -> int | None:
    return None if every is None else (tokens // every + 1) * every


# --- from a harvest -----------------------------------------------------------------------------


def harvest_data(spec: TrainSpec, manifest: dict, read: Callable[[str], bytes], **kw) -> HarvestData:
    """The batches and held-out tokens `spec` asks of the harvest `manifest` describes."""
    assert isinstance(spec.activations, ActivationsRef), "an online spec reads no harvest"
    return HarvestData(
        manifest,
        spec.activations.hooks[0] if spec.activations.hooks else spec.activations.hook,
        read,
        target_hook=spec.activations.target_hook,
        more_hooks=spec.activations.hooks[1:] if spec.activations.hooks else (),
        batch_size=spec.batch_size,
        seed=spec.seed,
        shuffle_tokens=spec.shuffle_tokens,
        validation_tokens=spec.validation_tokens,
        exclude_sinks=spec.sinks.exclude,
        norm_factor=spec.sinks.norm_factor,
        **kw,
    )


def train_from_harvest(
    spec: TrainSpec,
    manifest: dict,
    read: Callable[[str], bytes],
    *,
    device: str = "cpu",
    resume: TrainState | None = None,
    feed: dict | None = None,
    **kw,
) -> TrainResult:
    """`train_saes` on a harvest's activations (`read(shard key) -> bytes`, built by the worker;
    called from the feed's reader threads), with the held-out tokens measured and the sink counts
    and epochs in `result.data`. `feed`: HarvestData's keyword arguments (prefetch_threads,
    cache_bytes, ...). Other keyword arguments go to train_saes (on_progress, should_stop, ...)."""
    assert isinstance(spec.activations, ActivationsRef), "an online spec trains through saeq.jobs.train_online"
    data = harvest_data(spec, manifest, read, device=device, **(feed or {}))
    start = DataPosition.from_dict(resume.data_position) if resume and resume.data_position else DataPosition()
    batches = data.batches(start)
    validation = data.validation()
    try:
        result = train_saes(
            spec,
            batches,
            validation=validation,
            validation_contexts=data.validation_contexts(),
            device=device,
            resume=resume,
            **kw,
        )
    finally:  # stop the feed's threads now, not when a traceback holding the generator is freed
        batches.close()
    if spec.activations.hooks:
        hooks = list(spec.activations.hooks)
        result.layers = {
            n: layer_report(sae, validation, hooks) for n, sae in result.saes.items() if isinstance(sae, TopKCrosscoder)
        }
    train_sinks, val_sinks = data.sink_counts("train"), data.sink_counts("validation")
    for m in result.metrics.values():
        m.sinks_excluded_train = train_sinks.n_sinks if spec.sinks.exclude else 0
        m.sinks_excluded_validation = val_sinks.n_sinks if spec.sinks.exclude else 0
    n_ordinary = train_sinks.n_tokens - (train_sinks.n_sinks if spec.sinks.exclude else 0)
    result.data = {
        "hook": spec.activations.hook,
        **({"target_hook": spec.activations.target_hook} if spec.activations.target_hook else {}),
        **({"hooks": list(spec.activations.hooks)} if spec.activations.hooks else {}),
        "harvest_job_id": spec.activations.job_id,
        "train_tokens_available": n_ordinary,
        "epochs": result.tokens / max(n_ordinary, 1),
        "validation_tokens": val_sinks.n_tokens - (val_sinks.n_sinks if spec.sinks.exclude else 0),
        "sinks_excluded": spec.sinks.exclude,
        "sinks": {"train": train_sinks.to_dict(), "validation": val_sinks.to_dict()},
    }
    return result
