"""Acausal crosscoders (Anthropic, "Sparse Crosscoders", 2024): one dictionary that reads several
hook points of one token at once and writes a reconstruction of each.

    pre     = sum_l (x_l - b_dec_l) @ W_enc_l + b_enc = (x - b_dec) @ W_enc + b_enc
    acts    = topk(pre)                                       x = [x_1 | ... | x_L]  (B, L * d_layer)
    x_hat_l = acts @ W_dec_l + b_dec_l                        W_dec (d_sae, L * d_layer)

Summing per-layer encodings is one matrix product over the concatenated rows, so a crosscoder is a
TopK SAE over [x_1 | ... | x_L] (saeq.ml.activations lays several hooks of one harvest side by side,
token by token): its squared error is the sum over layers of each layer's squared error, the note's
loss. The note's L1 variant weights each latent's penalty by the sum of its per-layer decoder norms;
TopK has no sparsity penalty, so nothing needs weighting (decoder rows are kept at unit norm over
all layers, as a TopK SAE's). What the note reports, a feature's decoder norm per layer, comes from
`layer_decoder_norms`; `layer_report` gives it with FVU per layer on held-out tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from saeq.ml.sae.architectures import TopKSae

if TYPE_CHECKING:
    from saeq.specs import SaeConfig, TrainSpec

MAX_LAYERS = 8


class TopKCrosscoder(TopKSae):
    """The k largest latents of the summed per-layer encodings reconstruct every layer."""

    architecture = "topk_crosscoder"
    saelens_architecture = None  # SAELens has no crosscoder format: saved as saeq:topk_crosscoder

    def __init__(self, d_in: int, d_sae: int, architecture: str | None = None, *, n_layers: int = 2, **kw: Any):
        if not 2 <= n_layers <= MAX_LAYERS or d_in % n_layers:
            raise ValueError(
                f"a crosscoder reads 2..{MAX_LAYERS} equally wide layers: d_in={d_in}, n_layers={n_layers}"
            )
        super().__init__(d_in, d_sae, architecture, **kw)
        self.n_layers = n_layers
        self.d_layer = d_in // n_layers

    def layers(self, x: Tensor) -> Tensor:
        """(B, L * d_layer) -> (B, L, d_layer): each layer's part of a row."""
        return x.view(x.shape[0], self.n_layers, self.d_layer)

    def layer_decoder_norms(self) -> Tensor:
        """(d_sae, L): the norm of each feature's decoder vector in each layer."""
        with torch.no_grad():
            return self.W_dec.view(self.d_sae, self.n_layers, self.d_layer).norm(dim=2)

    def options(self) -> dict[str, Any]:
        return {"n_layers": self.n_layers}

    def saelens_fields(self) -> dict:
        return {"architecture": self.saelens_name(), "k": self.k}

    @classmethod
    def options_from_spec(cls, spec: TrainSpec, cfg: SaeConfig) -> dict[str, Any]:
        return {"n_layers": len(getattr(spec.activations, "hooks", None) or ())}


def decoder_norm_shares(norms_SL: Tensor, *, threshold: float = 0.5) -> dict[str, Any]:
    """Which layers the features live in, from their per-layer decoder norms (d_sae, L): each
    layer's share of the features whose norm mass (norm / sum of its norms) there exceeds
    `threshold`, the share with no such layer (spread over several), and the mean mass per layer."""
    mass = norms_SL / norms_SL.sum(dim=1, keepdim=True).clamp_min(1e-12)  # (d_sae, L)
    top_mass, top_layer = mass.max(dim=1)
    single = top_mass > threshold
    n_layers = norms_SL.shape[1]
    per_layer = torch.bincount(top_layer[single], minlength=n_layers).float() / norms_SL.shape[0]
    return {
        "threshold": threshold,
        "single_layer_share": [float(s) for s in per_layer],
        "multi_layer_share": float((~single).float().mean()),
        "mean_mass": [float(m) for m in mass.mean(dim=0)],
    }


@torch.no_grad()
def layer_report(sae: TopKCrosscoder, x: Tensor | None, hooks: list[str], *, chunk: int = 4096) -> dict[str, Any]:
    """FVU per layer and overall, L0 (on held-out rows x (N, L * d_layer), raw units, eval mode) and
    the per-layer decoder norms: what a crosscoder's train result reports."""
    norms = sae.layer_decoder_norms().cpu()
    report: dict[str, Any] = {
        "hooks": list(hooks),
        "decoder_norm_shares": decoder_norm_shares(norms),
        "decoder_norm_mean": [float(v) for v in norms.mean(dim=0)],
    }
    if x is None or x.shape[0] == 0:
        return report
    device = sae.W_enc.device
    mean_LD = sae.layers(x.to(device, torch.float32)).mean(dim=0)  # (L, d_layer)
    err_L = torch.zeros(sae.n_layers, device=device)
    var_L = torch.zeros(sae.n_layers, device=device)
    l0 = 0.0
    for c in x.split(chunk):
        c = c.to(device, torch.float32)
        codes = sae.encode_sparse(c)
        recon = sae.layers(sae.output(c, codes))  # (b, L, d_layer)
        rows = sae.layers(c)
        err_L += (rows - recon).pow(2).sum(dim=(0, 2))
        var_L += (rows - mean_LD).pow(2).sum(dim=(0, 2))
        l0 += float((codes.acts > 0).sum())
    report |= {
        "fvu_per_layer": [float(v) for v in err_L / var_L],
        "fvu": float(err_L.sum() / var_L.sum()),
        "l0": l0 / x.shape[0],
        "validation_tokens": x.shape[0],
    }
    return report
