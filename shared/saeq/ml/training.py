"""The pieces of SAE training: the losses (pure functions), one SAE with its optimiser and
dead-latent counters (`Trainee`), their initial state, and the held-out measurement. The loop that
feeds them batches is saeq.jobs.train."""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass, field

import torch
from torch import Tensor

from saeq.errors import InvalidSpec
from saeq.ml.distributed import DataGroup
from saeq.ml.held_out import HeldOutSums, latent_fractions, token_groups
from saeq.ml.sae import JumpReluSae, SparseAutoencoder, SparseCodes, Step, Transcoder, sae_class
from saeq.specs import SaeConfig, TrainSpec
from saeq.specs.costs import sae_latents
from saeq.specs.estimates import Estimate
from saeq.specs.train_seeds import sae_runs

DENSE_RATE = 0.1
"""A latent firing on more than this fraction of tokens counts as dense."""


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
    intervals: dict[str, Estimate] = field(default_factory=dict)
    """95% intervals of fvu, mse, l0 (bootstrap over held-out contexts, saeq.ml.held_out) and of
    dead_fraction, dead_fraction_validation, dense_fraction (Wilson over latents); empty without
    held-out tokens."""


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


class Trainee:
    """An SAE, its optimiser and dead-latent counters, and running figures for progress."""

    def __init__(self, name: str, cfg: SaeConfig, sae: SparseAutoencoder, device: str):
        self.name, self.cfg, self.sae, self.device = name, cfg, sae, device
        self.sae.bandwidth = cfg.jumprelu_bandwidth
        self.unit_decoder = cfg.keeps_unit_decoder()
        fused = device.startswith("cuda") or device == "cpu"
        self.opt = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(0.9, 0.999), fused=fused)
        self.aux_k = min(cfg.aux_k or sae.d_in // 2, sae.d_sae)
        self.tokens_since_fired = torch.zeros(sae.d_sae, dtype=torch.long, device=device)
        self.fire_rate = torch.zeros(sae.d_sae, device=device)
        self._sums = torch.zeros(4, device=device)  # loss, mse, fvu, l0 since the last report
        self._n = 0
        self._lr = 0.0

    def step(self, x: Tensor, lr: float, sparsity: float, autocast, group: DataGroup | None = None, B: int = 0) -> None:
        """One optimiser step on x (b, d_in). Data-parallel (`group`): x is this rank's share of a
        global batch of B rows; gradients, fire counts and figures are summed over the ranks."""
        sae, cfg, b = self.sae, self.cfg, x.shape[0]
        B = B or b
        weight = b / B  # the losses are means over this rank's rows; the sum over ranks is the global mean
        dead = None
        if sae.uses_k and cfg.auxk_alpha > 0:  # the k-sparse rules take AuxK
            dead = self.tokens_since_fired >= cfg.dead_window_tokens
        with autocast:
            out = sae(x, dead=dead, aux_k=self.aux_k)
            loss = out.mse
            rule_loss = sae.loss_terms(x, out)
            if rule_loss is not None:
                loss = loss + rule_loss
            if out.aux_codes is not None:
                assert dead is not None  # aux codes come only with a dead-latent mask
                e_hat = sae.decode_sparse(out.aux_codes, bias=False)
                residual = sae.split_batch(x)[1] - out.recon  # a transcoder's target is not its input
                loss = loss + cfg.auxk_alpha * auxk_loss(e_hat, residual, int(dead.sum()), self.aux_k)
            if sae.architecture == "relu":
                loss = loss + sparsity * cfg.l1_coefficient * l1_penalty(out.codes, sae.W_dec)
            elif isinstance(sae, JumpReluSae):  # jumprelu and the JumpReLU transcoders
                loss = loss + sparsity * cfg.l0_coefficient * l0_penalty(
                    out.pre_acts, sae.threshold, cfg.jumprelu_bandwidth
                )
        for params in self.opt.param_groups:
            params["lr"] = lr
        (loss * weight if group is not None else loss).backward()
        if group is not None:
            group.sum_grads_(sae.parameters())
        if self.unit_decoder:
            sae.remove_parallel_grad_()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            if self.unit_decoder:
                sae.normalize_decoder_()
            if isinstance(sae, JumpReluSae):
                sae.threshold.clamp_(min=0.0)
            fires = _fire_counts(out.codes, sae.d_sae)  # (d_sae,) tokens each latent fired on
            figures = torch.stack([loss.detach(), out.mse.detach(), out.fvu.detach(), out.l0.detach()]).float()
            if group is not None:  # one all-reduce for both: every rank agrees on dead latents
                summed = group.sum_(torch.cat([fires.float(), figures * weight]))  # (d_sae + 4,)
                fires, figures = summed[: sae.d_sae], summed[sae.d_sae :]
            self.tokens_since_fired += B
            self.tokens_since_fired[fires > 0] = 0
            a = min(1.0, B / cfg.dead_window_tokens)
            self.fire_rate.mul_(1 - a).add_(fires / B, alpha=a)
            self._sums += figures
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


def keep_freed_memory() -> None:
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


def build_trainees(
    spec: TrainSpec, names: list[str], d_in: int, device: str | list[str], first_x: Tensor | None
) -> list[Trainee]:
    """The SAEs at their initial state, SAE i on device i % len(devices); `first_x` (scaled) sets
    b_dec (None: resuming)."""
    devices = [device] if isinstance(device, str) else device
    out = []
    b_dec = None
    if first_x is not None and spec.b_dec_init != "zeros":
        b_dec = geometric_median(first_x) if spec.b_dec_init == "geometric_median" else first_x.mean(0)
    for j, (name, run) in enumerate(zip(names, sae_runs(spec), strict=False)):
        i, cfg = run.index, run.config
        d_sae = sae_latents(cfg, d_in)
        assert d_sae is not None  # d_in is known here
        cls = sae_class(cfg.architecture)
        if cls.uses_k and cfg.k > d_sae:
            raise InvalidSpec(f"k={cfg.k} exceeds d_sae={d_sae}", field=f"spec.saes[{i}].k")
        if cfg.matryoshka_groups is not None and sum(cfg.matryoshka_groups) != d_sae:
            raise InvalidSpec(
                f"matryoshka_groups sum to {sum(cfg.matryoshka_groups)}, not d_sae={d_sae}",
                field=f"spec.saes[{i}].matryoshka_groups",
            )
        gen = torch.Generator().manual_seed((run.seed * 1_000_003 + i) % (1 << 63))  # run.seed: seeds' or seed
        on = devices[j % len(devices)]
        options = cls.options_from_spec(spec, cfg)
        sae = cls(d_in, d_sae, k=cfg.k, generator=gen, decoder_init_norm=cfg.initial_decoder_norm(), **options).to(on)
        with torch.no_grad():
            if first_x is not None and isinstance(sae, Transcoder):
                sae.set_target_gain_(first_x)
            if b_dec is not None:
                sae.b_dec.copy_(sae.split_batch(b_dec[None])[1][0])  # a transcoder's: the target's part
            if isinstance(sae, JumpReluSae):
                sae.threshold.fill_(cfg.jumprelu_init_threshold)
        sae.train()
        out.append(Trainee(name, cfg, sae, on))
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
    contexts: Tensor | None = None,
) -> SaeMetrics:
    """FVU, MSE, L0, never-firing and dense latents of `sae` (eval mode) on tokens x (N, d_in),
    with their 95% intervals; a transcoder's x are [input | target] rows, its figures against the
    target. `contexts` (N,): the held-out context each row comes from (the bootstrap's unit; None:
    blocks of contiguous rows, saeq.ml.held_out)."""
    nan = float("nan")
    if x is None or x.shape[0] == 0:
        return SaeMetrics(name, sae.architecture, sae.d_in, sae.d_sae, sae.k, nan, nan, nan, dead_fraction, nan, nan, 0)
    n = x.shape[0]
    mean = sae.split_batch(x.to(device, torch.float32))[1].mean(0)
    sums = HeldOutSums(*token_groups(n, contexts), d_target=mean.shape[0], device=device)
    err = var = l0 = 0.0
    fires = torch.zeros(sae.d_sae, device=device)
    start = 0
    for c in x.split(chunk):
        c, target = sae.split_batch(c.to(device, torch.float32))
        codes = sae.encode_sparse(c)
        recon = sae.output(c, codes)
        err_c = (target - recon).pow(2).sum(1)  # (c,)
        centred = target - mean  # (c, d)
        var_c = centred.pow(2).sum(1)  # (c,)
        err += float(err_c.sum())
        var += float(var_c.sum())
        active = codes.acts > 0
        l0 += float(active.sum())
        fires += torch.bincount(codes.latents, weights=active.float(), minlength=sae.d_sae)
        l0_c = torch.zeros(c.shape[0], device=device).index_add_(0, codes.rows, active.float())  # (c,)
        sums.add(start, err_c, var_c, l0_c, centred)
        start += c.shape[0]
    fvu, mse, mean_l0 = err / var, err / n, l0 / n
    n_dead, n_dense = int((fires == 0).sum()), int((fires / n > DENSE_RATE).sum())
    return SaeMetrics(
        name,
        sae.architecture,
        sae.d_in,
        sae.d_sae,
        sae.k,
        fvu=fvu,
        mse=mse,
        l0=mean_l0,
        dead_fraction=dead_fraction,
        dead_fraction_validation=n_dead / sae.d_sae,
        dense_fraction=n_dense / sae.d_sae,
        validation_tokens=n,
        intervals=sums.estimates(fvu, mse, mean_l0) | latent_fractions(n_dead, n_dense, sae.d_sae, dead_fraction),
    )
