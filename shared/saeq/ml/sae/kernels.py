"""The SAE's math kernels: top-k selection, sparse encoder and decoder autograd functions, and the
JumpReLU straight-through estimators. Pure functions of tensors; the model (model.py) calls them.

TopK codes are sparse end to end: the encoder's backward and the decoder touch only the k active
latents of each token; only the encoder's forward matrix product is dense.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

_PRE_MAX = 1 << 26  # pre-activations computed at once, at most (256 MB in fp32)


class SparseCodes(NamedTuple):
    """The active latents of B tokens as flat lists, a CSR matrix (B, d_sae) in effect.

    Token b owns entries offsets[b] .. offsets[b+1] (or N for the last). For TopK every token
    owns k entries, some of which may be 0 (ReLU after the top-k)."""

    acts: Tensor  # (N,) float
    latents: Tensor  # (N,) int64
    offsets: Tensor  # (B,) int64

    @property
    def rows(self) -> Tensor:
        """(N,) the token each entry belongs to."""
        n, b = self.acts.shape[0], self.offsets.shape[0]
        counts = torch.diff(self.offsets, append=self.offsets.new_tensor([n]))
        return torch.repeat_interleave(torch.arange(b, device=self.acts.device), counts)

    def to_dense(self, d_sae: int) -> Tensor:
        out = self.acts.new_zeros(self.offsets.shape[0], d_sae)  # (B, d_sae)
        out.index_put_((self.rows, self.latents), self.acts, accumulate=True)
        return out


def _per_token(acts_Bk: Tensor, idx_Bk: Tensor) -> SparseCodes:
    B, k = idx_Bk.shape
    offsets = torch.arange(0, B * k, k, device=idx_Bk.device)
    return SparseCodes(acts_Bk.reshape(-1), idx_Bk.reshape(-1), offsets)


def _select_topk(
    x_c: Tensor,
    W_enc: Tensor,
    b_enc: Tensor,
    k: int,
    dead_idx: Tensor | None = None,
    aux_k: int = 0,
    buffers: dict | None = None,
):
    """Top-k pre-activations of each row, and the top aux_k among the latents `dead_idx`.
    -> vals (B, k), idx (B, k), aux_vals (B, aux_k), aux_idx (B, aux_k) (global latent ids).

    The pre-activations go into a scratch buffer kept in `buffers` across calls: a fresh
    (B, d_sae) tensor each step costs page faults worth a sixth of the matrix product on CPU.
    Rows are done in slices only when B x d_sae exceeds _PRE_MAX."""
    B, d_sae = x_c.shape[0], W_enc.shape[1]
    cuda_autocast = x_c.is_cuda and torch.is_autocast_enabled("cuda")
    dtype = torch.get_autocast_dtype("cuda") if cuda_autocast else x_c.dtype
    rows = max(1, min(B, _PRE_MAX // d_sae))
    buffers = {} if buffers is None else buffers
    key = ("pre", rows, d_sae, dtype, x_c.device)
    if key not in buffers:
        buffers.clear()
        buffers[key] = torch.empty(rows, d_sae, dtype=dtype, device=x_c.device)
    buf = buffers[key]
    vals = torch.empty(B, k, dtype=dtype, device=x_c.device)
    idx = torch.empty(B, k, dtype=torch.long, device=x_c.device)
    aux_vals = torch.empty(B, aux_k, dtype=dtype, device=x_c.device)
    aux_idx = torch.empty(B, aux_k, dtype=torch.long, device=x_c.device)
    W, b = W_enc.to(dtype), b_enc.to(dtype)
    for r0 in range(0, B, rows):
        r1 = min(r0 + rows, B)
        pre = buf[: r1 - r0]
        torch.addmm(b, x_c[r0:r1].to(dtype), W, out=pre)
        vals[r0:r1], idx[r0:r1] = _topk_rows(pre, k)
        if aux_k and dead_idx is not None:
            v, i = pre.index_select(1, dead_idx).topk(aux_k, dim=1, sorted=False)
            aux_vals[r0:r1], aux_idx[r0:r1] = v, dead_idx[i]
    return vals.to(x_c.dtype), idx, aux_vals.to(x_c.dtype), aux_idx


def _topk_rows(pre: Tensor, k: int, block: int = 8) -> tuple[Tensor, Tensor]:
    """torch.topk(pre, k, dim=1) (unsorted), exactly, in about 3/4 of its time on CPU.

    Cut each row into d_sae / block strided blocks (block j: columns j, j + nb, j + 2 nb, ...).
    The k largest entries of a row lie in at most k blocks, and each such block's maximum is
    one of those k entries, so they all lie in the k blocks with the largest maxima: a top-k
    over the block maxima, then over the k x block entries of the chosen blocks."""
    R, d_sae = pre.shape
    nb = d_sae // block
    if pre.is_cuda or d_sae % block or nb < 4 * k:
        return pre.topk(k, dim=1, sorted=False)
    maxima = pre.view(R, block, nb).amax(1)  # (R, nb)
    blocks = maxima.topk(k, dim=1, sorted=False).indices  # (R, k)
    cols = (blocks.unsqueeze(-1) + nb * torch.arange(block, device=pre.device)).view(R, k * block)
    vals, j = pre.gather(1, cols).topk(k, dim=1, sorted=False)
    return vals, cols.gather(1, j)


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():  # "sparse CSR support is in beta"
        warnings.simplefilter("ignore")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def stable_order(latents: Tensor, d_sae: int) -> Tensor:
    """torch.argsort(latents, stable=True). On CPU, numpy's radix sort on int16 keys: about 1 ms
    for 131k entries, where torch 2.13's CPU sort takes about 190 ms (bench/train.py's shape)."""
    if latents.device.type != "cpu":
        return torch.argsort(latents, stable=True)
    keys = latents.detach().numpy().astype(np.int16 if d_sae <= np.iinfo(np.int16).max else np.int32)
    return torch.from_numpy(np.argsort(keys, kind="stable"))


def _by_latent(latents: Tensor, rows: Tensor, values: Tensor, d_sae: int, n_rows: int) -> Tensor:
    """The (d_sae, n_rows) CSR matrix with `values` at (latents, rows): entries grouped by latent,
    so S @ dense sums each latent's entries without scattering."""
    order = stable_order(latents, d_sae)
    crow = torch.zeros(d_sae + 1, dtype=torch.long, device=latents.device)
    crow[1:] = torch.bincount(latents, minlength=d_sae).cumsum(0)
    return _csr(crow, rows[order], values[order], (d_sae, n_rows))


class _GatherPre(torch.autograd.Function):
    """vals = pre[rows, cols] where pre = x_c @ W_enc + b_enc and x_c = x - b_dec, for entries
    selected (and computed) beforehand; the backward touches the selected entries only.

    x_c comes in already centred; b_dec is passed separately so its gradient through the encoder,
    -W_enc @ (column sums of the sparse gradient), costs one matrix-vector product."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, vals, x_c, b_dec, W_enc, b_enc, rows, cols):
        ctx.save_for_backward(x_c, W_enc, rows, cols)
        return vals.to(W_enc.dtype, copy=True)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, g):  # g (N,)
        x_c, W_enc, rows, cols = ctx.saved_tensors
        d_in, d_sae = W_enc.shape
        g = g.to(W_enc.dtype).contiguous()
        grad_x = grad_b_dec = grad_W = grad_b = None
        per_latent = torch.bincount(cols, weights=g, minlength=d_sae).to(W_enc.dtype)  # (d_sae,)
        if ctx.needs_input_grad[4]:
            grad_b = per_latent
        if ctx.needs_input_grad[2]:
            grad_b_dec = -(W_enc @ per_latent)
        if ctx.needs_input_grad[3]:
            S = _by_latent(cols, rows, g, d_sae, x_c.shape[0])  # (d_sae, B)
            grad_W = (S @ x_c.to(W_enc.dtype)).T  # (d_in, d_sae)
            grad_W = grad_W.contiguous()
        if ctx.needs_input_grad[1]:
            offsets = torch.searchsorted(rows, torch.arange(x_c.shape[0], device=rows.device))
            grad_x = F.embedding_bag(cols, W_enc.T.contiguous(), offsets, mode="sum", per_sample_weights=g)
        return None, grad_x, grad_b_dec, grad_W, grad_b, None, None


class _SparseDecode(torch.autograd.Function):
    """out[b] = sum over token b's entries of acts[n] * W_dec[latents[n]]: (N,) -> (B, d_in)."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, acts, latents, offsets, W_dec):
        acts = acts.to(W_dec.dtype)
        ctx.save_for_backward(acts, latents, offsets, W_dec)
        return F.embedding_bag(latents, W_dec, offsets, mode="sum", per_sample_weights=acts)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_out):  # (B, d_in)
        acts, latents, offsets, W_dec = ctx.saved_tensors
        grad_out = grad_out.to(W_dec.dtype).contiguous()
        B, N = offsets.shape[0], latents.shape[0]
        counts = torch.diff(offsets, append=offsets.new_tensor([N]))
        rows = torch.repeat_interleave(torch.arange(B, device=latents.device), counts)
        grad_acts = grad_W = None
        if ctx.needs_input_grad[0]:  # <grad_out[row], W_dec[latent]> for each entry
            grad_acts = torch.ops.aten._embedding_bag_per_sample_weights_backward(
                grad_out, W_dec, latents, offsets, rows, 0, -1
            )
        if ctx.needs_input_grad[3]:
            grad_W = _by_latent(latents, rows, acts, W_dec.shape[0], B) @ grad_out  # (d_sae, d_in)
        return grad_acts, None, None, grad_W


def _rectangle(x: Tensor) -> Tensor:
    return ((x > -0.5) & (x < 0.5)).to(x.dtype)


class JumpReLU(torch.autograd.Function):
    """pre * (pre > threshold); the threshold learns through a straight-through estimator with a
    rectangle kernel of width `bandwidth` (Rajamanoharan et al. 2024, as in Gemma Scope)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, g):
        pre, threshold = ctx.saved_tensors
        h = ctx.bandwidth
        grad_pre = (pre > threshold) * g
        grad_t = (-(threshold / h) * _rectangle((pre - threshold) / h) * g).sum(0)
        return grad_pre, grad_t, None


class Step(torch.autograd.Function):
    """1[pre > threshold] with the same estimator: the L0 penalty's path to the threshold."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        pre, threshold = ctx.saved_tensors
        h = ctx.bandwidth
        return None, (-(1.0 / h) * _rectangle((pre - threshold) / h) * g).sum(0), None
