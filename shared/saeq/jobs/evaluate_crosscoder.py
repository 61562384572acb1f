"""Evaluate a crosscoder in the model: FVU per layer on ordinary tokens, and the model's loss with
every layer it covers spliced at once (CE loss recovered, KL).

The crosscoder is acausal: each layer's reconstruction reads every layer's clean activation, so one
clean pass captures them all, and a second pass replaces each covered hook's output by its layer's
reconstruction (a later layer's own computation is overwritten by its reconstruction too).
Definitions as saeq.jobs.evaluate's: CE loss recovered = (CE_zero - CE_crosscoder) /
(CE_zero - CE_clean), CE_zero with every covered hook zero-ablated; KL(clean || spliced) per
next-token prediction. Attention sinks (by the first hook's norms, as in training) are left out of
every average and keep their clean activations in the splices.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from saeq import hooks as hook_names
from saeq.errors import InvalidSpec
from saeq.ml import hookpoints
from saeq.ml.models import LoadedModel
from saeq.ml.sae import TopKCrosscoder
from saeq.ml.sinks import SinkReference, sink_mask
from saeq.ml.splice import splice
from saeq.ml.stopping import micro_batches


@dataclass
class CrosscoderEvalResult:
    metrics: dict[str, float]
    """fvu (all layers), l0; ce_clean, ce_crosscoder, ce_zero, ce_loss_recovered, kl_crosscoder,
    kl_zero (per next-token prediction from an ordinary position)."""
    fvu_per_layer: list[float]
    """FVU of each hook's reconstruction, in `hooks` order."""
    counts: dict[str, int] = field(default_factory=dict)
    """tokens (all read), ordinary_tokens, sinks_excluded, loss_positions."""


@dataclass
class _Sums:
    sq_err_L: Tensor | None = None
    sq_L: Tensor | None = None
    sum_LD: Tensor | None = None
    l0: float = 0.0
    n: int = 0
    tokens: int = 0
    n_loss: int = 0
    ce: dict[str, float] = field(default_factory=lambda: {"clean": 0.0, "crosscoder": 0.0, "zero": 0.0})
    kl: dict[str, float] = field(default_factory=lambda: {"crosscoder": 0.0, "zero": 0.0})


def evaluate_crosscoder(
    cc: TopKCrosscoder, lm: LoadedModel, contexts: Iterable[Tensor], *, hooks: list[str], sinks: SinkReference | None
) -> CrosscoderEvalResult:
    """Metrics of `cc` over its `hooks` (in its rows' order) on batches of contexts (B, T) token ids."""
    if len(hooks) != cc.n_layers or cc.d_layer != lm.d_model:
        raise InvalidSpec(
            f"the crosscoder reads {cc.n_layers} hooks of width {cc.d_layer}; got {len(hooks)} of {lm.d_model}",
            field="spec.hooks",
        )
    for name in hooks:
        if hook_names.parse(name).block >= lm.n_layers:
            raise InvalidSpec(f"{name}: the model has {lm.n_layers} blocks", field="spec.hooks")
    cc = cc.to(lm.device).eval()
    s = _Sums()
    for ids_BT in contexts:
        ids_BT = ids_BT.to(lm.device, torch.long)
        for micro in micro_batches(*ids_BT.shape):
            _batch(cc, lm, ids_BT[micro], hooks, sinks, s)
    if s.n == 0 or s.sq_err_L is None or s.sq_L is None or s.sum_LD is None:
        raise InvalidSpec("no ordinary tokens to evaluate on", field="spec.corpus")
    var_L = s.sq_L - s.sum_LD.pow(2).sum(dim=1) / s.n  # sum ||x_l - mean_l||^2
    ce = {k: v / max(s.n_loss, 1) for k, v in s.ce.items()}
    denominator = ce["zero"] - ce["clean"]
    metrics = {
        "fvu": float(s.sq_err_L.sum() / var_L.sum()),
        "l0": s.l0 / s.n,
        "ce_clean": ce["clean"],
        "ce_crosscoder": ce["crosscoder"],
        "ce_zero": ce["zero"],
        "ce_loss_recovered": (ce["zero"] - ce["crosscoder"]) / denominator if denominator else float("nan"),
        "kl_crosscoder": s.kl["crosscoder"] / max(s.n_loss, 1),
        "kl_zero": s.kl["zero"] / max(s.n_loss, 1),
    }
    counts = {"tokens": s.tokens, "ordinary_tokens": s.n, "sinks_excluded": s.tokens - s.n, "loss_positions": s.n_loss}
    return CrosscoderEvalResult(metrics, [float(v) for v in s.sq_err_L / var_L], counts)


@torch.inference_mode()
def _batch(cc: TopKCrosscoder, lm: LoadedModel, ids_BT: Tensor, hooks: list[str], sinks, s: _Sums) -> None:
    B, T = ids_BT.shape
    seen: dict[str, Tensor] = {}
    with contextlib.ExitStack() as stack:
        for h in hooks:
            stack.enter_context(hookpoints.read(lm.model, h, lambda x, h=h: seen.__setitem__(h, x)))
        logits_clean = lm.model(input_ids=ids_BT, use_cache=False).logits.float()
    x_NLD = torch.stack([seen[h].reshape(B * T, -1).float() for h in hooks], dim=1)  # (N, L, d)
    positions_N = torch.arange(T, device=ids_BT.device).repeat(B)
    if sinks is None:
        keep_N = torch.ones(B * T, dtype=torch.bool, device=ids_BT.device)
    else:
        keep_N = ~sink_mask(positions_N, x_NLD[:, 0].norm(dim=-1), sinks.median_norm, sinks.norm_factor)
    rows = x_NLD[keep_N].reshape(-1, cc.d_in)  # (n, L * d): the crosscoder's rows, ordinary tokens
    codes = cc.encode_sparse(rows)
    recon_NLD = x_NLD.clone()  # sinks keep their clean activations
    recon_NLD[keep_N] = cc.layers(cc.output(rows, codes))
    x, r = x_NLD[keep_N].double(), recon_NLD[keep_N].double()
    s.sq_err_L = _add(s.sq_err_L, (x - r).pow(2).sum(dim=(0, 2)))
    s.sq_L = _add(s.sq_L, x.pow(2).sum(dim=(0, 2)))
    s.sum_LD = _add(s.sum_LD, x.sum(dim=0))
    s.l0 += float((codes.acts > 0).sum())
    s.n += int(keep_N.sum())
    s.tokens += B * T

    keep_BT1 = keep_N.reshape(B, T, 1)

    def spliced(values: dict[str, Tensor]) -> Tensor:
        with contextlib.ExitStack() as stack:
            for h in hooks:
                new = values[h]
                stack.enter_context(splice(lm.model, h, lambda a, new=new: torch.where(keep_BT1, new.to(a.dtype), a)))
            return lm.model(input_ids=ids_BT, use_cache=False).logits.float()

    logits_cc = spliced({h: recon_NLD[:, i].reshape(B, T, -1) for i, h in enumerate(hooks)})
    logits_zero = spliced({h: torch.zeros_like(seen[h]) for h in hooks})
    loss_mask = keep_N.reshape(B, T)[:, :-1]  # position t predicts token t + 1
    targets = ids_BT[:, 1:, None]
    logp_clean = F.log_softmax(logits_clean[:, :-1], dim=-1)
    s.ce["clean"] += float(-logp_clean.gather(-1, targets)[..., 0][loss_mask].sum())
    for name, logits in (("crosscoder", logits_cc), ("zero", logits_zero)):
        logp = F.log_softmax(logits[:, :-1], dim=-1)
        s.ce[name] += float(-logp.gather(-1, targets)[..., 0][loss_mask].sum())
        s.kl[name] += float((logp_clean.exp() * (logp_clean - logp)).sum(-1)[loss_mask].sum())
    s.n_loss += int(loss_mask.sum())


def _add(total: Tensor | None, part: Tensor) -> Tensor:
    return part if total is None else total + part
