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
import ctypes
import io
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from saeq.errors import Cancelled, InvalidSpec
from saeq.ml.activations import Batch, DataPosition, HarvestData
from saeq.ml.sae import SparseAutoencoder, SparseCodes, Step
from saeq.specs import SaeConfig, TrainSpec
from saeq.specs.costs import sae_latents

DENSE_RATE = 0.1
"""A latent firing on more than this fraction of tokens counts as dense."""
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
class SaeMetrics:
    """One trained SAE, measured on the held-out tokens (with the saved, raw-input weights)."""

    name: str
    architecture: str
    d_in: int
    d_sae: int
    k: int | None
    fvu: float
    """sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over the held-out tokens."""
    mse: float
    """Mean over held-out tokens of ||x - x_hat||^2, in the activations' own units."""
    l0: float
    """Mean active latents per held-out token."""
    dead_fraction: float
    """Latents that did not fire in the last dead_window_tokens of training."""
    dead_fraction_validation: float
    """Latents that fire on no held-out token."""
    dense_fraction: float
    """Latents that fire on more than 10% of held-out tokens."""
    validation_tokens: int
    sinks_excluded_train: int | None = None
    """Attention-sink tokens the rule left out of the training data (once per epoch)."""
    sinks_excluded_validation: int | None = None
    """... and out of the held-out tokens these figures are measured on."""


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

    def to_dict(self) -> dict:
        """Everything but the weights, JSON-able."""
        return {
            "tokens": self.tokens,
            "steps": self.steps,
            "wall_s": self.wall_s,
            "input_scale": self.input_scale,
            "data": self.data,
            "saes": {n: asdict(m) for n, m in self.metrics.items()},
        }


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


# --- losses (pure) ------------------------------------------------------------------------------


def auxk_loss(e_hat: Tensor, residual: Tensor, n_dead: int, aux_k: int) -> Tensor:
    """AuxK (Gao et al. 2024, App. B.1): the top aux_k dead latents' reconstruction e_hat (B, d)
    of the main residual (B, d), mean squared norm over tokens; scaled down by n_dead / aux_k
    when fewer latents are dead than it may use."""
    return min(n_dead / aux_k, 1.0) * (e_hat - residual.detach()).pow(2).sum(-1).mean()


def l1_penalty(acts: Tensor, W_dec: Tensor) -> Tensor:
    """sum_i f_i ||W_dec[i]|| averaged over tokens (Anthropic, April 2024). acts (B, d_sae)."""
    return (acts * W_dec.norm(dim=1)).sum(-1).mean()


def l0_penalty(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """Mean over tokens of the number of latents with pre (B, d_sae) above their threshold,
    differentiable in the threshold through the JumpReLU straight-through estimator."""
    return Step.apply(pre, threshold, bandwidth).sum(-1).mean()


def geometric_median(x: Tensor, iters: int = 100, tol: float = 1e-6) -> Tensor:
    """Weiszfeld's algorithm: the point minimising the summed distance to the rows of x (N, d)."""
    y = x.mean(0)
    for _ in range(iters):
        w = 1 / (x - y).norm(dim=1).clamp_min(1e-8)  # (N,)
        y_next = (w[:, None] * x).sum(0) / w.sum()
        if (y_next - y).norm() <= tol * y.norm().clamp_min(1e-8):
            return y_next
        y = y_next
    return y


def lr_factor(spec: TrainSpec, step: int, total_steps: int) -> float:
    """Linear warmup over the first lr_warmup of the steps, linear decay to lr_end_factor over
    the last lr_decay of them."""
    t = step / total_steps
    if spec.lr_warmup and t < spec.lr_warmup:
        return (step + 1) / (spec.lr_warmup * total_steps)
    if spec.lr_decay and t > 1 - spec.lr_decay:
        frac = (t - (1 - spec.lr_decay)) / spec.lr_decay
        return 1 - frac * (1 - spec.lr_end_factor)
    return 1.0


# --- one SAE being trained ----------------------------------------------------------------------


class _Trainee:
    """An SAE, its optimiser and dead-latent counters, and running figures for progress."""

    def __init__(self, name: str, cfg: SaeConfig, sae: SparseAutoencoder, device: str):
        self.name, self.cfg, self.sae = name, cfg, sae
        self.sae.bandwidth = cfg.jumprelu_bandwidth
        fused = device.startswith("cuda") or device == "cpu"
        self.opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999), fused=fused)
        self.aux_k = min(cfg.aux_k or sae.d_in // 2, sae.d_sae)
        self.tokens_since_fired = torch.zeros(sae.d_sae, dtype=torch.long, device=device)
        self.fire_rate = torch.zeros(sae.d_sae, device=device)
        self._sums = torch.zeros(4, device=device)  # loss, mse, fvu, l0 since the last report
        self._n = 0
        self._lr = 0.0

    def step(self, x: Tensor, lr: float, sparsity: float, autocast) -> None:
        sae, cfg, B = self.sae, self.cfg, x.shape[0]
        dead = None
        if sae.architecture in ("topk", "batchtopk") and cfg.auxk_alpha > 0:
            dead = self.tokens_since_fired >= cfg.dead_window_tokens
        with autocast:
            out = sae(x, dead=dead, aux_k=self.aux_k)
            loss = out.mse
            if out.aux_codes is not None:
                e_hat = sae.decode_sparse(out.aux_codes, bias=False)
                loss = loss + cfg.auxk_alpha * auxk_loss(e_hat, x - out.recon, int(dead.sum()), self.aux_k)
            if sae.architecture == "relu":
                loss = loss + sparsity * cfg.l1_coefficient * l1_penalty(out.codes, sae.W_dec)
            elif sae.architecture == "jumprelu":
                loss = loss + sparsity * cfg.l0_coefficient * l0_penalty(
                    out.pre_acts, sae.threshold, cfg.jumprelu_bandwidth
                )
        for group in self.opt.param_groups:
            group["lr"] = lr
        loss.backward()
        if cfg.normalize_decoder:
            sae.remove_parallel_grad_()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            if cfg.normalize_decoder:
                sae.normalize_decoder_()
            if sae.architecture == "jumprelu":
                sae.threshold.clamp_(min=0.0)
            fires = _fire_counts(out.codes, sae.d_sae)  # (d_sae,) tokens each latent fired on
            self.tokens_since_fired += B
            self.tokens_since_fired[fires > 0] = 0
            a = min(1.0, B / cfg.dead_window_tokens)
            self.fire_rate.mul_(1 - a).add_(fires / B, alpha=a)
            self._sums += torch.stack([loss.detach(), out.mse.detach(), out.fvu.detach(), out.l0.detach()]).float()
        self._n += 1
        self._lr = lr

    def report(self) -> dict[str, float]:
        s = (self._sums / max(self._n, 1)).tolist()
        self._sums.zero_()
        self._n = 0
        return {
            "loss": s[0],
            "mse": s[1],
            "fvu": s[2],
            "l0": s[3],
            "lr": self._lr,
            "dead_fraction": self.dead_fraction(),
            "dense_fraction": float((self.fire_rate > DENSE_RATE).float().mean()),
        }

    def dead_fraction(self) -> float:
        return float((self.tokens_since_fired >= self.cfg.dead_window_tokens).float().mean())

    def state(self) -> dict:
        clone = lambda t: t.detach().clone().cpu()
        opt = self.opt.state_dict()
        opt["state"] = {
            i: {k: clone(v) if torch.is_tensor(v) else v for k, v in s.items()} for i, s in opt["state"].items()
        }
        return {
            "model": {k: clone(v) for k, v in self.sae.state_dict().items()},
            "optimizer": opt,
            "tokens_since_fired": clone(self.tokens_since_fired),
            "fire_rate": clone(self.fire_rate),
        }

    def load(self, state: dict) -> None:
        self.sae.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.tokens_since_fired.copy_(state["tokens_since_fired"])
        self.fire_rate.copy_(state["fire_rate"])


def _fire_counts(codes: SparseCodes | Tensor, d_sae: int) -> Tensor:
    if isinstance(codes, SparseCodes):
        return torch.bincount(codes.latents, weights=(codes.acts > 0).float(), minlength=d_sae)
    return (codes > 0).sum(0).float()


# --- the loop -----------------------------------------------------------------------------------


def sae_names(spec: TrainSpec) -> list[str]:
    return [cfg.name or f"sae{i}" for i, cfg in enumerate(spec.saes)]


def train_saes(
    spec: TrainSpec,
    batches: Iterable[Batch | Tensor],
    *,
    validation: Tensor | None = None,
    device: str = "cpu",
    on_progress: Callable[[TrainProgress], None] = lambda p: None,
    should_stop: Callable[[], bool] = lambda: False,
    resume: TrainState | None = None,
    on_checkpoint: Callable[[TrainState], None] = lambda s: None,
    progress_every_s: float = 2.0,
) -> TrainResult:
    """Train the SAEs `spec.saes` on `batches` ((B, d_in) activations, or Batch with the data
    position after it) until `spec.total_tokens`. With `resume`, `batches` must start where
    `resume.data_position` says. Raises Cancelled when `should_stop()` turns true."""
    names = sae_names(spec)
    it: Iterator = iter(batches)
    total_steps = math.ceil(spec.total_tokens / spec.batch_size)
    cuda = device.startswith("cuda")
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif device == "cpu":
        _keep_freed_memory()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    if resume is None:
        first = next(it, None)
        if first is None:
            raise InvalidSpec("no activations to train on", field="spec.activations")
        d_in = _acts(first).shape[1]
        first_x = _acts(first).to(device, torch.float32)
        scale = math.sqrt(d_in) / float(first_x.norm(dim=1).mean()) if spec.normalize_activations else 1.0
        trainees = _build(spec, names, d_in, device, first_x * scale)
        step, tokens, wall0, pending = 0, 0, 0.0, [first]
    else:
        if resume.spec != spec.model_dump(mode="json"):
            raise InvalidSpec("the checkpoint was taken by a job with a different spec")
        d_in = next(iter(resume.saes.values()))["model"]["W_enc"].shape[0]
        scale = resume.input_scale
        trainees = _build(spec, names, d_in, device, None)
        for t in trainees:
            t.load(resume.saes[t.name])
        torch.set_rng_state(resume.rng)
        step, tokens, wall0, pending = resume.step, resume.tokens, resume.wall_s, []

    position = resume.data_position if resume is not None else None
    epoch = DataPosition.from_dict(position).epoch if position else None
    t_start = time.perf_counter()
    tokens_at_start, last_report = tokens, t_start
    next_checkpoint = _next_multiple(tokens, spec.checkpoint_every_tokens)

    while tokens < spec.total_tokens:
        if should_stop():
            raise Cancelled("training cancelled")
        item = pending.pop() if pending else next(it, None)
        if item is None:
            raise InvalidSpec("the activations ran out before total_tokens", field="spec.total_tokens")
        x = _acts(item).to(device, torch.float32, non_blocking=True)
        if scale != 1.0:
            x = x * scale
        if isinstance(item, Batch):
            position, epoch = item.position.to_dict(), item.position.epoch
        lr_f = lr_factor(spec, step, total_steps)
        sparsity = min(1.0, (step + 1) / (spec.sparsity_warmup * total_steps)) if spec.sparsity_warmup else 1.0
        for t in trainees:
            t.step(x, t.cfg.lr * lr_f, sparsity, autocast)
        step += 1
        tokens += x.shape[0]

        now = time.perf_counter()
        done = tokens >= spec.total_tokens
        if now - last_report >= progress_every_s or done:
            rate = (tokens - tokens_at_start) / max(now - t_start, 1e-9)
            on_progress(
                TrainProgress(step, tokens, spec.total_tokens, rate, epoch, {t.name: t.report() for t in trainees})
            )
            last_report = now
        if next_checkpoint is not None and tokens >= next_checkpoint and not done:
            on_checkpoint(
                TrainState(
                    spec=spec.model_dump(mode="json"),
                    step=step,
                    tokens=tokens,
                    input_scale=scale,
                    data_position=position,
                    saes={t.name: t.state() for t in trainees},
                    rng=torch.get_rng_state(),
                    wall_s=wall0 + now - t_start,
                )
            )
            next_checkpoint = _next_multiple(tokens, spec.checkpoint_every_tokens)

    wall = wall0 + time.perf_counter() - t_start
    saes, metrics = {}, {}
    for t in trainees:
        sae = t.sae
        sae.fold_input_scale_(scale)
        sae.eval()
        saes[t.name] = sae
        metrics[t.name] = measure(sae, validation, name=t.name, dead_fraction=t.dead_fraction(), device=device)
    return TrainResult(saes, metrics, tokens, step, wall, scale)


def _keep_freed_memory() -> None:
    """Make glibc keep freed blocks up to 32 MB in the heap instead of handing them back to the
    OS: every step frees and reallocates gradients and activations of that size, and faulting
    their pages in again costs ~7% of a TopK step on CPU. Process-wide, like the TF32 switch."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
    libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's largest; bigger blocks are mmapped
    libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    libc.mallopt(M_TOP_PAD, 64 << 20)


def _acts(item: Batch | Tensor) -> Tensor:
    return item.acts if isinstance(item, Batch) else item


def _next_multiple(tokens: int, every: int | None) -> int | None:
    return None if every is None else (tokens // every + 1) * every


def _build(spec: TrainSpec, names: list[str], d_in: int, device: str, first_x: Tensor | None) -> list[_Trainee]:
    """The SAEs at their initial state; `first_x` (scaled) sets b_dec (None: resuming)."""
    out = []
    b_dec = None
    if first_x is not None and spec.b_dec_init != "zeros":
        b_dec = geometric_median(first_x) if spec.b_dec_init == "geometric_median" else first_x.mean(0)
    for i, (name, cfg) in enumerate(zip(names, spec.saes, strict=False)):
        d_sae = sae_latents(cfg, d_in)
        if cfg.architecture in ("topk", "batchtopk") and cfg.k > d_sae:
            raise InvalidSpec(f"k={cfg.k} exceeds d_sae={d_sae}", field=f"spec.saes[{i}].k")
        gen = torch.Generator().manual_seed((spec.seed * 1_000_003 + i) % (1 << 63))
        sae = SparseAutoencoder(d_in, d_sae, cfg.architecture, k=cfg.k, generator=gen).to(device)
        with torch.no_grad():
            if b_dec is not None:
                sae.b_dec.copy_(b_dec)
            if cfg.architecture == "jumprelu":
                sae.threshold.fill_(cfg.jumprelu_init_threshold)
        sae.train()
        out.append(_Trainee(name, cfg, sae, device))
    return out


@torch.no_grad()
def measure(
    sae: SparseAutoencoder,
    x: Tensor | None,
    *,
    name: str = "sae",
    dead_fraction: float = float("nan"),
    device: str = "cpu",
    chunk: int = 4096,
) -> SaeMetrics:
    """FVU, MSE, L0, never-firing and dense latents of `sae` (eval mode) on tokens x (N, d_in)."""
    nan = float("nan")
    if x is None or x.shape[0] == 0:
        return SaeMetrics(name, sae.architecture, sae.d_in, sae.d_sae, sae.k, nan, nan, nan, dead_fraction, nan, nan, 0)
    mean = x.to(device, torch.float32).mean(0)
    err = var = l0 = 0.0
    fires = torch.zeros(sae.d_sae, device=device)
    for c in x.split(chunk):
        c = c.to(device, torch.float32)
        codes = sae.encode_sparse(c)
        recon = sae.decode_sparse(codes)
        err += float((c - recon).pow(2).sum())
        var += float((c - mean).pow(2).sum())
        active = codes.acts > 0
        l0 += float(active.sum())
        fires += torch.bincount(codes.latents, weights=active.float(), minlength=sae.d_sae)
    n = x.shape[0]
    return SaeMetrics(
        name,
        sae.architecture,
        sae.d_in,
        sae.d_sae,
        sae.k,
        fvu=err / var,
        mse=err / n,
        l0=l0 / n,
        dead_fraction=dead_fraction,
        dead_fraction_validation=float((fires == 0).float().mean()),
        dense_fraction=float((fires / n > DENSE_RATE).float().mean()),
        validation_tokens=n,
    )


# --- from a harvest -----------------------------------------------------------------------------


def harvest_data(spec: TrainSpec, manifest: dict, read: Callable[[str], bytes], **kw) -> HarvestData:
    """The batches and held-out tokens `spec` asks of the harvest `manifest` describes."""
    return HarvestData(
        manifest,
        spec.activations.hook,
        read,
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
    **kw,
) -> TrainResult:
    """`train_saes` on a harvest's activations (`read(shard key) -> bytes`, built by the worker), with
    the held-out tokens measured and the sink counts and epochs in `result.data`. Keyword
    arguments go to train_saes (on_progress, should_stop, on_checkpoint, ...)."""
    data = harvest_data(spec, manifest, read)
    start = DataPosition.from_dict(resume.data_position) if resume and resume.data_position else DataPosition()
    result = train_saes(spec, data.batches(start), validation=data.validation(), device=device, resume=resume, **kw)
    train_sinks, val_sinks = data.sink_counts("train"), data.sink_counts("validation")
    for m in result.metrics.values():
        m.sinks_excluded_train = train_sinks.n_sinks if spec.sinks.exclude else 0
        m.sinks_excluded_validation = val_sinks.n_sinks if spec.sinks.exclude else 0
    n_ordinary = train_sinks.n_tokens - (train_sinks.n_sinks if spec.sinks.exclude else 0)
    result.data = {
        "hook": spec.activations.hook,
        "harvest_job_id": spec.activations.job_id,
        "train_tokens_available": n_ordinary,
        "epochs": result.tokens / max(n_ordinary, 1),
        "validation_tokens": val_sinks.n_tokens - (val_sinks.n_sinks if spec.sinks.exclude else 0),
        "sinks_excluded": spec.sinks.exclude,
        "sinks": {"train": train_sinks.to_dict(), "validation": val_sinks.to_dict()},
    }
    return result
