"""Transcoders (Dunefsky et al. 2024) and skip-transcoders (Paulo et al. 2025): a sparse code of one
hook point (the MLP's input) that predicts another (the MLP's output), so the MLP can be replaced.

    pre   = x @ W_enc + b_enc                  x (B, d_in): no b_dec subtracted, it lives in y's space
    acts  = rule(pre)                          topk | jumprelu (the SAE rules, architectures.py)
    y_hat = acts @ W_dec + b_dec [+ x @ W_skip^T]   W_dec (d_sae, d_out), W_skip (d_out, d_in)

Training batches are [x | y] rows (B, d_in + d_out) (saeq.ml.activations pairs two hooks of one
harvest token by token); the trainer's loss and FVU are against y. Files: SAELens 6.54 defines
`jumprelu_transcoder` and `jumprelu_skip_transcoder` (and ReLU ones), sparsify TopK transcoders with
an optional skip (d_out == d_in); formats.py writes each where its peer reads it.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from saeq.ml.sae.architectures import JumpReluSae, TopKSae
from saeq.ml.sae.model import SparseAutoencoder


class Transcoder(SparseAutoencoder):
    """What every transcoder rule shares: the output width, the input-space encoder, the skip."""

    is_transcoder = True
    has_skip: ClassVar[bool] = False
    """A learned linear skip W_skip (d_out, d_in), zero at the start (skip-transcoders)."""

    def __init__(self, d_in: int, d_sae: int, architecture: str | None = None, *, d_out: int | None = None, **kw: Any):
        super().__init__(d_in, d_sae, architecture, **kw)
        self.d_out = d_out or d_in
        like = {"dtype": self.W_enc.dtype, "device": self.W_enc.device}
        if self.d_out != d_in:  # the base built a d_in-wide decoder: random rows of d_out instead
            W_dec = torch.randn(d_sae, self.d_out, generator=kw.get("generator"), dtype=like["dtype"])
            W_dec *= self.decoder_init_norm / W_dec.norm(dim=1, keepdim=True)
            self.W_dec = nn.Parameter(W_dec.to(like["device"]))
            self.b_dec = nn.Parameter(torch.zeros(self.d_out, **like))
        if self.has_skip:
            self.W_skip = nn.Parameter(torch.zeros(self.d_out, d_in, **like))
        # Training only: the target is multiplied by this gain, so it is as large as the input (an
        # MLP's output can be 100x smaller than its input: Adam's steps suit O(1) weights). Folded
        # into the weights at the end (fold_input_scale_), 1 in every saved file.
        self.register_buffer("target_gain", torch.ones((), dtype=torch.float32, device=like["device"]))
        self.target_gain: Tensor

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # files hold no gain: it is 1
        state_dict.setdefault(prefix + "target_gain", torch.ones((), dtype=torch.float32))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def set_target_gain_(self, batch: Tensor) -> None:
        """Make the target of `batch` ([x | y] rows) as large, on average, as the input."""
        x, y = batch[:, : self.d_in], batch[:, self.d_in :]
        self.target_gain.fill_(float(x.norm(dim=1).mean() / y.norm(dim=1).mean().clamp_min(1e-12)))

    @torch.no_grad()
    def fold_input_scale_(self, scale: float) -> None:
        """Take raw x and predict raw y: the input scale as an SAE's, then the target gain g (every
        output-space term, and the codes, divided by g; W_dec's rows keep their norms)."""
        super().fold_input_scale_(scale)
        g = float(self.target_gain)
        self.W_enc.div_(g)
        self.b_enc.div_(g)
        self.b_dec.div_(g)
        if hasattr(self, "threshold"):
            self.threshold.div_(g)
        if self.has_skip:
            self.W_skip.div_(g)
        self.target_gain.fill_(1.0)

    def input_shift(self) -> Tensor | None:
        return None

    def split_batch(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        """[x | y] rows (B, d_in + d_out) -> x (B, d_in), y (B, d_out)."""
        if batch.shape[1] != self.d_in + self.d_out:
            raise ValueError(
                f"a transcoder batch has d_in + d_out = {self.d_in + self.d_out} columns, not {batch.shape[1]}"
            )
        return batch[:, : self.d_in], batch[:, self.d_in :] * self.target_gain

    def skip_out(self, x: Tensor) -> Tensor | None:
        return x @ self.W_skip.T if self.has_skip else None

    @torch.no_grad()
    def transcode(self, x: Tensor) -> Tensor:
        """The predicted target of inputs x, inference rule: (B, d_in) -> (B, d_out)."""
        return self.output(x, self.encode_sparse(x))

    def options(self) -> dict[str, Any]:
        return {"d_out": self.d_out}

    def saelens_fields(self) -> dict:
        return {"architecture": self.saelens_name(), "d_out": self.d_out, "apply_b_dec_to_input": False}


class TopKTranscoder(Transcoder, TopKSae):
    """The k largest latents of the MLP's input predict its output (sparsify's transcoder)."""

    architecture = "topk_transcoder"
    saelens_architecture = None  # SAELens has no TopK transcoder: saeq:topk_transcoder (sparsify reads it)

    def saelens_fields(self) -> dict:
        return Transcoder.saelens_fields(self) | {"k": self.k}


class TopKSkipTranscoder(TopKTranscoder):
    """TopK transcoder plus a learned linear skip (sparsify's `skip_connection`)."""

    architecture = "topk_skip_transcoder"
    has_skip = True


class JumpReluTranscoder(Transcoder, JumpReluSae):
    """A learnt threshold per latent and an L0 penalty, as JumpReluSae (SAELens's jumprelu_transcoder)."""

    architecture = "jumprelu_transcoder"
    saelens_architecture = "jumprelu_transcoder"


class JumpReluSkipTranscoder(JumpReluTranscoder):
    """JumpReLU transcoder plus a learned linear skip (SAELens's jumprelu_skip_transcoder)."""

    architecture = "jumprelu_skip_transcoder"
    saelens_architecture = "jumprelu_skip_transcoder"
    has_skip = True
