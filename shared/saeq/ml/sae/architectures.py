"""The built-in activation rules, one SparseAutoencoder subclass each (registered by name in
saeq.specs.architectures): TopK, BatchTopK, JumpReLU and ReLU."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from saeq.ml.sae.kernels import JumpReLU, SparseCodes, _per_token, _select_topk
from saeq.ml.sae.model import Selection, SparseAutoencoder


class TopKSae(SparseAutoencoder):
    """The k largest latents of each token (Gao et al. 2024), sparse in training and inference."""

    architecture = "topk"
    uses_k = True
    saelens_architecture = "topk"

    def encode(self, x: Tensor) -> Tensor:
        return self.encode_sparse(x).to_dense(self.d_sae)

    def encode_sparse(self, x: Tensor) -> SparseCodes:
        assert self.k is not None
        with torch.no_grad():
            vals, idx, _, _ = _select_topk(self.centred(x), self.W_enc, self.b_enc, self.k, buffers=self._buffers_cache)
            return _per_token(F.relu(vals), idx)

    def sparse_forward(self) -> bool:
        return True

    def select_train(self, x_c: Tensor, dead_idx: Tensor | None, k_aux: int) -> Selection:
        assert self.k is not None
        arange_B = torch.arange(x_c.shape[0], device=x_c.device)
        vals, idx, aux_vals, aux_idx = _select_topk(
            x_c, self.W_enc, self.b_enc, self.k, dead_idx, k_aux, self._buffers_cache
        )
        return arange_B.repeat_interleave(self.k), idx.flatten(), vals.flatten(), aux_vals, aux_idx

    def saelens_fields(self) -> dict:
        return {"k": self.k, "rescale_acts_by_decoder_norm": False, "architecture": "topk"}


class BatchTopKSae(SparseAutoencoder):
    """The B x k largest activations of the whole batch while training; at inference a threshold,
    the moving average of the smallest kept activation (exported as JumpReLU, as SAELens does)."""

    architecture = "batchtopk"
    uses_k = True
    saelens_architecture = "jumprelu"

    def init_rule(self, *, dtype: torch.dtype, device: str | torch.device | None) -> None:
        # Inference threshold, estimated while training (an EMA of the smallest kept act).
        self.register_buffer("threshold", torch.zeros(self.d_sae, dtype=dtype, device=device))

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_acts(x)
        return pre * (pre > self.threshold)

    def train_codes(self, pre: Tensor) -> Tensor:  # in eval mode: the inference rule
        return pre * (pre > self.threshold)

    def sparse_forward(self) -> bool:
        return self.training

    def select_train(self, x_c: Tensor, dead_idx: Tensor | None, k_aux: int) -> Selection:
        assert self.k is not None
        B = x_c.shape[0]
        aux_vals = aux_idx = None
        pre = torch.addmm(self.b_enc, x_c, self.W_enc).relu_()  # (B, d_sae)
        flat = pre.flatten().topk(B * self.k, sorted=False).indices.sort().values
        rows, cols, vals = flat // self.d_sae, flat % self.d_sae, pre.flatten()[flat]
        if k_aux and dead_idx is not None:
            aux_vals, j = pre.index_select(1, dead_idx).topk(k_aux, dim=1, sorted=False)
            aux_idx = dead_idx[j]
        del pre
        return rows, cols, vals, aux_vals, aux_idx

    @torch.no_grad()
    def after_sparse_step(self, acts: Tensor) -> None:
        positive = acts[acts > 0]
        if positive.numel():
            t = self.threshold[0] * (1 - self.threshold_lr) + positive.min() * self.threshold_lr
            self.threshold.fill_(t)

    def saelens_fields(self) -> dict:
        return {"architecture": "jumprelu"}  # batchtopk is saved as JumpReLU, as SAELens does


class JumpReluSae(SparseAutoencoder):
    """A learnt threshold per latent and an L0 penalty (Rajamanoharan et al. 2024, Gemma Scope)."""

    architecture = "jumprelu"
    saelens_architecture = "jumprelu"

    def init_rule(self, *, dtype: torch.dtype, device: str | torch.device | None) -> None:
        self.threshold = nn.Parameter(torch.zeros(self.d_sae, dtype=dtype, device=device))

    def encode(self, x: Tensor) -> Tensor:
        pre = self.pre_acts(x)
        return pre * (pre > self.threshold)  # thresholds >= 0: a JumpReLU

    def train_codes(self, pre: Tensor) -> Tensor:
        codes = JumpReLU.apply(pre, self.threshold, self.bandwidth)
        assert isinstance(codes, Tensor)
        return codes


class ReluSae(SparseAutoencoder):
    """ReLU with an L1 penalty weighted by decoder norms (Anthropic, April 2024)."""

    architecture = "relu"
    saelens_architecture = "standard"

    def encode(self, x: Tensor) -> Tensor:
        return F.relu(self.pre_acts(x))

    def train_codes(self, pre: Tensor) -> Tensor:
        return F.relu(pre)
