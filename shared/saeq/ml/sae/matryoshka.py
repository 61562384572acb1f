"""Matryoshka BatchTopK (Bussmann et al. 2025, "Learning Multi-Level Features with Matryoshka
SAEs"): BatchTopK over the whole dictionary, and every prefix of its latent groups trained to
reconstruct alone, so early groups keep general features and later ones refine them.

    loss = sum over prefixes p of ||x - (acts[:, :p] @ W_dec[:p] + b_dec)||^2   (the full one is the MSE)

The inference threshold is BatchTopK's (an EMA of the smallest kept activation), and the file is a
JumpReLU one with SAELens's `training_architecture` metadata, as SAELens saves its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from saeq.ml.sae.architectures import BatchTopKSae
from saeq.ml.sae.kernels import SparseCodes
from saeq.ml.sae.model import SaeOutput

if TYPE_CHECKING:
    from saeq.specs import SaeConfig


class MatryoshkaBatchTopKSae(BatchTopKSae):
    """BatchTopK whose nested prefixes of `groups` (latent counts summing to d_sae) each reconstruct."""

    architecture = "matryoshka_batchtopk"

    def __init__(
        self, d_in: int, d_sae: int, architecture: str | None = None, *, groups: Sequence[int] | None = None, **kw: Any
    ):
        super().__init__(d_in, d_sae, architecture, **kw)
        groups = list(groups) if groups is not None else [d_sae]  # one group: plain BatchTopK
        if not groups or min(groups) <= 0 or sum(groups) != d_sae:
            raise ValueError(f"matryoshka groups must be positive sizes summing to d_sae={d_sae}, got {groups}")
        self.groups = groups
        self.ends = torch.tensor(groups).cumsum(0).tolist()
        """Prefix widths: latents [0, ends[i]) are prefix i; the last is d_sae."""

    def loss_terms(self, x: Tensor, out: SaeOutput) -> Tensor | None:
        """Sum over the inner prefixes of their mean squared reconstruction error per token."""
        if len(self.groups) == 1:
            return None
        B, codes = x.shape[0], out.codes
        partial = self.b_dec.expand_as(x)  # (B, d_in) the reconstruction of the prefix so far
        total = x.new_zeros(())
        start = 0
        for end in self.ends[:-1]:
            partial = partial + self._decode_group(codes, start, end, B)
            total = total + (x - partial).pow(2).sum() / B
            start = end
        return total

    def _decode_group(self, codes: SparseCodes | Tensor, start: int, end: int, B: int) -> Tensor:
        """The decoder's sum over latents [start, end) alone, without b_dec: (B, d_in)."""
        if isinstance(codes, Tensor):  # dense codes (B, d_sae): eval mode
            return codes[:, start:end] @ self.W_dec[start:end]
        # Sparse training codes: the group's entries only, so the G prefixes decode N entries in all.
        keep = (codes.latents >= start) & (codes.latents < end)  # (N,)
        rows = codes.rows[keep]
        offsets = torch.searchsorted(rows, torch.arange(B, device=rows.device))
        return self.decode_sparse(SparseCodes(codes.acts[keep], codes.latents[keep], offsets), bias=False)

    def options(self) -> dict[str, Any]:
        return {"groups": self.groups}

    @classmethod
    def options_from_config(cls, cfg: SaeConfig) -> dict[str, Any]:
        return {"groups": cfg.matryoshka_groups}

    def saelens_metadata(self) -> dict[str, Any]:
        # What SAELens writes for its MatryoshkaBatchTopKTrainingSAE (its widths are the prefix ends).
        details = {"k": self.k, "topk_threshold_lr": self.threshold_lr, "matryoshka_widths": self.ends}
        return {"training_architecture": "matryoshka_batchtopk", "training_architecture_details": details}
