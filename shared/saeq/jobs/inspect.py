"""Inspect: the SAE's features on each token of a text. The model runs up to the SAE's hook point
(and no further), the SAE encodes every token, and the attention-sink rule marks the tokens whose
features are left out, as training and the feature pages leave them out. A transcoder encodes its
input hook; a crosscoder all its hooks, read in one pass (sinks and norms by the first one's)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from saeq.errors import InvalidSpec
from saeq.ml.features import check_input_width, first_hook_norms, read_hooks
from saeq.ml.models import LoadedModel
from saeq.ml.sae import SparseAutoencoder
from saeq.ml.sinks import SinkReference

SinkReason = Literal["position0", "norm"]


@dataclass(frozen=True)
class TokenFeatures:
    """Per token (T of them): the sink reason, the norm at the hook, the top features and the chosen
    features' activations; lists, ready for JSON."""

    sinks: list[SinkReason | None]
    """None for an ordinary token."""
    norms: list[float]
    """At the (first) hook the SAE reads."""
    top_features: list[list[int]]
    """(T, <=k) feature ids, highest activation first, non-zero only; empty on a sink."""
    top_activations: list[list[float]]
    chosen: list[list[float] | None] | None
    """(T, len(features)) activations of the chosen features, None on a sink; None if none chosen."""


@torch.inference_mode()
def inspect_tokens(
    lm: LoadedModel,
    sae: SparseAutoencoder,
    hook: str | Sequence[str],
    ids: Sequence[int],
    *,
    sinks: SinkReference | None,
    top_k: int,
    features: Sequence[int] | None = None,
) -> TokenFeatures:
    """Encode the activations at `hook` (or several hooks side by side, a crosscoder's) of the token
    ids `ids` (one context) with `sae`."""
    hooks = (hook,) if isinstance(hook, str) else tuple(hook)
    check_input_width(sae, lm, hooks, field="sae")
    for i, f in enumerate(features or ()):
        if f >= sae.d_sae:
            raise InvalidSpec(
                f"feature {f} is not in 0..{sae.d_sae - 1} (the SAE has d_sae={sae.d_sae})", field=f"features.{i}"
            )
    sae = sae.to(lm.device).eval()
    x_TD = read_hooks(lm, hooks, torch.tensor([list(ids)], device=lm.device))  # (T, L * d), float32
    norms_T = first_hook_norms(x_TD, len(hooks))
    reasons: list[SinkReason | None] = [None] * len(ids)
    if sinks is not None:
        reasons[0] = "position0"
        for t in (norms_T > sinks.norm_factor * sinks.median_norm).nonzero()[:, 0].tolist():
            reasons[t] = reasons[t] or "norm"
    acts_TS = sae.encode(x_TD)  # (T, d_sae)
    vals_TK, idx_TK = acts_TS.topk(min(top_k, sae.d_sae), dim=-1)
    top_f, top_a = [], []
    for t, (vals, idx) in enumerate(zip(vals_TK.tolist(), idx_TK.tolist(), strict=True)):
        keep = [] if reasons[t] else [i for i, v in enumerate(vals) if v > 0]
        top_f.append([idx[i] for i in keep])
        top_a.append([vals[i] for i in keep])
    chosen = None
    if features:
        picked = acts_TS[:, list(features)].tolist()  # (T, F)
        chosen = [None if reasons[t] else row for t, row in enumerate(picked)]
    return TokenFeatures(reasons, norms_T.tolist(), top_f, top_a, chosen)
