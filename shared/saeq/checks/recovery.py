"""How well an SAE recovers known features (saeq.ml.synthetic), as SAELens's SynthSAEBench
defines it (sae_lens.synthetic.evals), so the figures compare: MCC (Hungarian one-to-one match on
|decoder cosine|), uniqueness, per-latent firing precision/recall/F1 against the latent's best
true feature; plus each true feature's best cosine, FVU and L0."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def abs_cosines(W_dec_LD: Tensor, features_FD: Tensor) -> Tensor:
    """|cos| between each decoder row and each true feature: (L, F)."""
    a = W_dec_LD.float() / W_dec_LD.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    b = features_FD.float() / features_FD.float().norm(dim=1, keepdim=True).clamp_min(1e-12)
    return (a @ b.T).abs()


def mcc(W_dec_LD: Tensor, features_FD: Tensor) -> float:
    """Mean |cos| over the one-to-one matching of latents to features that maximises it
    (min(L, F) pairs): 1 when every true feature has its own latent, near 0 for random ones."""
    cos_LF = abs_cosines(W_dec_LD, features_FD)
    rows, cols = linear_sum_assignment(cos_LF.cpu().double().numpy(), maximize=True)
    return float(cos_LF[torch.as_tensor(rows), torch.as_tensor(cols)].mean())


def uniqueness(W_dec_LD: Tensor, features_FD: Tensor) -> float:
    """Distinct true features among the latents' best matches, per latent (1: no two latents
    track the same feature)."""
    if W_dec_LD.shape[0] == 0:
        return 0.0
    return len(abs_cosines(W_dec_LD, features_FD).argmax(dim=1).unique()) / W_dec_LD.shape[0]


def best_cosines(W_dec_LD: Tensor, features_FD: Tensor) -> Tensor:
    """For each true feature, the |cos| of its closest latent: (F,)."""
    return abs_cosines(W_dec_LD, features_FD).max(dim=0).values


@dataclass
class Recovery:
    mcc: float
    mean_best_cos: float
    """Mean over true features of their closest latent's |cos|."""
    uniqueness: float
    precision: float
    recall: float
    f1: float
    """Means over latents: latent != 0 as a detector of its best-matching feature firing."""
    fvu: float
    """sum ||x - x_hat||^2 / sum ||x - mean x||^2 over the scored tokens."""
    l0: float
    true_l0: float
    dead_fraction: float
    """Latents that fired on none of the scored tokens."""
    n_tokens: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def score_recovery(
    encode: Callable[[Tensor], Tensor],
    decode: Callable[[Tensor], Tensor],
    W_dec_LD: Tensor,
    features_FD: Tensor,
    batches: Iterable[tuple[Tensor, Tensor]],
) -> Recovery:
    """Score an SAE (its encode to dense (B, L) codes, decode, decoder rows) on batches of
    (acts_BD, true codes_BF)."""
    W = W_dec_LD.detach().float().cpu()
    match_L = abs_cosines(W, features_FD).argmax(dim=1)
    L = W.shape[0]
    tp, fp, fn = torch.zeros(L), torch.zeros(L), torch.zeros(L)
    fired = torch.zeros(L, dtype=torch.bool)
    err = l0 = true_l0 = 0.0
    n, s2 = 0, 0.0  # token count, sum ||x||^2 (with s1_D: the variance about the mean at the end)
    s1_D = torch.zeros(features_FD.shape[1], dtype=torch.float64)
    for acts_BD, codes_BF in batches:
        lat_BL = encode(acts_BD)
        x_hat = decode(lat_BL)
        on_BL, truth_BL = (lat_BL != 0).cpu(), (codes_BF[:, match_L] > 0).cpu()
        tp += (on_BL & truth_BL).sum(0)
        fp += (on_BL & ~truth_BL).sum(0)
        fn += (~on_BL & truth_BL).sum(0)
        fired |= on_BL.any(0)
        x = acts_BD.double()
        err += float((x - x_hat.double()).pow(2).sum())
        s1_D += x.sum(0).cpu()
        s2 += float(x.pow(2).sum())
        l0 += float(on_BL.sum())
        true_l0 += float((codes_BF > 0).sum())
        n += acts_BD.shape[0]
    variance = s2 - float((s1_D * s1_D).sum()) / n  # sum ||x - mean||^2
    precision = torch.where(tp + fp > 0, tp / (tp + fp).clamp_min(1), 0.0)
    recall = torch.where(tp + fn > 0, tp / (tp + fn).clamp_min(1), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12), 0.0)
    return Recovery(
        mcc=mcc(W, features_FD),
        mean_best_cos=float(best_cosines(W, features_FD).mean()),
        uniqueness=uniqueness(W, features_FD),
        precision=float(precision.mean()),
        recall=float(recall.mean()),
        f1=float(f1.mean()),
        fvu=err / variance,
        l0=l0 / n,
        true_l0=true_l0 / n,
        dead_fraction=float((~fired).float().mean()),
        n_tokens=n,
    )
