"""Feature recovery of SAEs trained on a synthetic harvest, against its known truth: what a train
job reports per SAE. SynthSAEBench's figures (saeq.checks.recovery: MCC over the Hungarian
matching, uniqueness, per-latent firing F1, FVU, L0), plus per true feature its best decoder
|cosine|, the latent the Hungarian matching gives it and that pair's firing F1, on held-out rows
drawn from another stream of the same generator."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from saeq.checks.recovery import abs_cosines, score_recovery
from saeq.ml.sae import SparseAutoencoder
from saeq.ml.synthetic_truth import SyntheticTruth, heldout_batches

MATCHED_COS = 0.9
"""A true feature counts as recovered when its Hungarian-matched latent's |cosine| reaches this."""


def synthetic_recovery(saes: dict[str, SparseAutoencoder], truth: SyntheticTruth, *, n_tokens: int) -> dict:
    """{"heldout": how the held-out rows were made, "saes": per SAE its figures (or why none)}."""
    model = truth.model()
    heldout = {
        "n_tokens": n_tokens,
        "stream": "heldout",  # saeq.ml.synthetic_truth.stream_seed(seed, "heldout"): no shard's stream
        "seed": truth.seed,
        "firing_scored": model is not None,
    }
    if model is None:
        heldout["why_not"] = (
            "this saeq's generator no longer makes the stored features from their parameters: decoder "
            "figures only (MCC, cosines, uniqueness) against the stored features"
        )
    out = {}
    F, D = truth.features_FD.shape
    for name, sae in saes.items():
        if sae.is_transcoder or sae.d_in != D:
            out[name] = {"skipped": f"reads {sae.d_in} dims, not the harvest's {D} as one SAE: no truth to match"}
            continue
        W_LD = sae.W_dec.detach().float().cpu()
        figures, matched_latent_F = _decoder_figures(W_LD, truth.features_FD)
        if model is not None:  # two passes over the same held-out rows (drawn again: no copy kept)
            sae = sae.cpu().eval()
            rows = heldout_batches(model, truth.seed, n_tokens)
            figures |= score_recovery(sae.encode, sae.decode, W_LD, truth.features_FD, rows).to_dict()
            f1_F = _pair_f1(sae, matched_latent_F, heldout_batches(model, truth.seed, n_tokens))
            figures["f1_per_feature_mean"] = float(f1_F.mean())
            figures["per_feature"]["f1"] = _rounded(f1_F)
        figures["per_feature"]["firing_prob"] = _rounded(truth.firing_probs_F)
        out[name] = figures
    return {"heldout": heldout, "matched_cos": MATCHED_COS, "n_true_features": F, "saes": out}


def _decoder_figures(W_LD: Tensor, features_FD: Tensor) -> tuple[dict, Tensor]:
    """The figures of the decoder alone, and each true feature's matched latent (-1: none, when
    there are fewer latents than features)."""
    cos_LF = abs_cosines(W_LD, features_FD)
    lat, feat = linear_sum_assignment(cos_LF.double().numpy(), maximize=True)
    F = features_FD.shape[0]
    matched_latent = torch.full((F,), -1, dtype=torch.long)
    matched_cos = torch.zeros(F)
    matched_latent[feat] = torch.as_tensor(lat)
    matched_cos[feat] = cos_LF[torch.as_tensor(lat), torch.as_tensor(feat)]
    best_F = cos_LF.max(dim=0).values
    return {
        "mcc": float(matched_cos[torch.as_tensor(feat)].mean()),
        "mean_best_cos": float(best_F.mean()),
        "uniqueness": len(cos_LF.argmax(dim=1).unique()) / max(W_LD.shape[0], 1),
        "n_matched": int((matched_cos >= MATCHED_COS).sum()),
        "per_feature": {
            "best_cos": _rounded(best_F),
            "matched_latent": matched_latent.tolist(),
            "matched_cos": _rounded(matched_cos),
        },
    }, matched_latent


@torch.no_grad()
def _pair_f1(sae: SparseAutoencoder, matched_latent: Tensor, rows: Iterator[tuple[Tensor, Tensor]]) -> Tensor:
    """(F,): per true feature, the firing F1 of its matched latent as a detector of it (0 unmatched)."""
    has = matched_latent >= 0
    lat_F = matched_latent.clamp_min(0)
    tp = fp = fn = torch.zeros(matched_latent.shape[0])
    for acts_BD, codes_BF in rows:
        on_BF = sae.encode(acts_BD)[:, lat_F] != 0
        truth_BF = codes_BF > 0
        tp = tp + (on_BF & truth_BF).sum(0)
        fp = fp + (on_BF & ~truth_BF).sum(0)
        fn = fn + (~on_BF & truth_BF).sum(0)
    return torch.where(has & (tp > 0), 2 * tp / (2 * tp + fp + fn).clamp_min(1), 0.0)


def _rounded(t: Tensor) -> list[float]:
    return [round(float(v), 4) for v in t]
