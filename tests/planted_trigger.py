"""An SAE with a planted trigger for conditional-steering tests: at `blocks.0.hook_resid_pre` (the token
embeddings, the same for a token in any context) feature WATCH fires on one chosen token and on no
other, and every other feature never fires."""

from __future__ import annotations

HOOK = "blocks.0.hook_resid_pre"
WATCH = 0
"""The trigger feature: active only on the planted token."""
STEER = 1
"""The feature the tests edit: its decoder row is a random unit direction."""
D_SAE = 8


def planted_trigger_sae(embeddings_VD, token: int):
    """A ReLU SAE over (V, D) token embeddings whose feature WATCH is positive exactly on `token`."""
    import torch

    from saeq.ml.sae import SparseAutoencoder

    emb_VD = embeddings_VD.detach().float()
    torch.manual_seed(0)
    sae = SparseAutoencoder(emb_VD.shape[1], D_SAE, "relu").eval().requires_grad_(False)
    unit_D = emb_VD[token] / emb_VD[token].norm()
    proj_V = emb_VD @ unit_D  # (V,) each token's embedding along the planted one's
    others = torch.cat([proj_V[:token], proj_V[token + 1 :]])
    assert proj_V[token] > others.max(), "the planted token's embedding is not the most aligned with itself"
    sae.W_enc.zero_()
    sae.W_enc[:, WATCH] = unit_D
    sae.b_enc.fill_(-1e3)  # the other features never fire
    sae.b_enc[WATCH] = -(proj_V[token] + others.max()) / 2  # between the token and the nearest other
    sae.b_dec.zero_()
    return sae


def absent_token(vocab_size: int, *id_lists) -> int:
    """The first ordinary token id (past the specials) in none of the lists."""
    seen = {i for ids in id_lists for i in ids}
    return next(t for t in range(3, vocab_size) if t not in seen)
