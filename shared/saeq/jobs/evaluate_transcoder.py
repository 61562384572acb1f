"""Evaluate a transcoder: how well it predicts its target hook (the MLP's output) from its input hook,
and the model's loss with the MLP's output replaced by the transcoder's (CE loss recovered, KL).

Definitions as saeq.jobs.evaluate's (SAELens's): FVU against the target over ordinary tokens; CE
loss recovered = (CE_zero - CE_transcoder) / (CE_zero - CE_clean), CE_zero with the target hook
zero-ablated; KL(clean || spliced) per next-token prediction. Attention sinks (by the input hook's
norms, as in training) are left out of every average and keep their own MLP output in the splices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from saeq import hooks
from saeq.errors import Cancelled, InvalidSpec
from saeq.ml import hookpoints
from saeq.ml.models import LoadedModel
from saeq.ml.sae import Transcoder
from saeq.ml.sinks import SinkReference, sink_mask
from saeq.ml.splice import splice
from saeq.ml.stopping import micro_batches


@dataclass
class TranscoderEvalResult:
    metrics: dict[str, float]
    """fvu, mse, l0 (ordinary tokens); ce_clean, ce_transcoder, ce_zero, ce_loss_recovered,
    kl_transcoder, kl_zero (per next-token prediction from an ordinary position)."""
    counts: dict[str, int] = field(default_factory=dict)
    """tokens (all read), ordinary_tokens, sinks_excluded, loss_positions."""


@dataclass
class _Sums:
    sq_resid: float = 0.0
    sq_y: float = 0.0
    l0: float = 0.0
    n: int = 0
    sinks: int = 0
    tokens: int = 0
    n_loss: int = 0
    sum_y: Tensor | None = None
    ce: dict[str, float] = field(default_factory=lambda: {"clean": 0.0, "transcoder": 0.0, "zero": 0.0})
    kl: dict[str, float] = field(default_factory=lambda: {"transcoder": 0.0, "zero": 0.0})


def evaluate_transcoder(
    tc: Transcoder,
    lm: LoadedModel,
    contexts: Iterable[Tensor],
    *,
    hook: str,
    target_hook: str,
    sinks: SinkReference | None,
    should_stop: Callable[[], bool] = lambda: False,
) -> TranscoderEvalResult:
    """Metrics of `tc` reading `hook` and replacing `target_hook` over batches of contexts (B, T)
    token ids. `sinks` None keeps every token."""
    for name, field_name in ((hook, "spec.hook"), (target_hook, "spec.target_hook")):
        if hooks.parse(name).block >= lm.n_layers:
            raise InvalidSpec(f"{name}: the model has {lm.n_layers} blocks", field=field_name)
    if (tc.d_in, tc.d_out) != (lm.d_model, lm.d_model):
        raise InvalidSpec(
            f"the transcoder maps {tc.d_in} -> {tc.d_out}, the model's hooks are {lm.d_model} wide", field="spec.sae"
        )
    tc = tc.to(lm.device).eval()
    s = _Sums()
    for ids_BT in contexts:
        ids_BT = ids_BT.to(lm.device, torch.long)
        for micro in micro_batches(*ids_BT.shape):
            if should_stop():
                raise Cancelled("evaluation cancelled")
            _batch(tc, lm, ids_BT[micro], hook, target_hook, sinks, s)
    if s.n == 0 or s.sum_y is None:
        raise InvalidSpec("no ordinary tokens to evaluate on", field="spec.corpus")
    mean_y = s.sum_y / s.n
    var = s.sq_y - s.n * float(mean_y.pow(2).sum())  # sum ||y - mean||^2
    ce = {k: v / max(s.n_loss, 1) for k, v in s.ce.items()}
    denominator = ce["zero"] - ce["clean"]
    metrics = {
        "fvu": s.sq_resid / var,
        "mse": s.sq_resid / s.n,
        "l0": s.l0 / s.n,
        "ce_clean": ce["clean"],
        "ce_transcoder": ce["transcoder"],
        "ce_zero": ce["zero"],
        "ce_loss_recovered": (ce["zero"] - ce["transcoder"]) / denominator if denominator else float("nan"),
        "kl_transcoder": s.kl["transcoder"] / max(s.n_loss, 1),
        "kl_zero": s.kl["zero"] / max(s.n_loss, 1),
    }
    counts = {"tokens": s.tokens, "ordinary_tokens": s.n, "sinks_excluded": s.sinks, "loss_positions": s.n_loss}
    return TranscoderEvalResult(metrics, counts)


@torch.inference_mode()
def _batch(tc: Transcoder, lm: LoadedModel, ids_BT: Tensor, hook: str, target_hook: str, sinks, s: _Sums) -> None:
    B, T = ids_BT.shape
    seen: dict[str, Tensor] = {}
    with (
        hookpoints.read(lm.model, hook, lambda x: seen.__setitem__("x", x)),
        hookpoints.read(lm.model, target_hook, lambda y: seen.__setitem__("y", y)),
    ):
        logits_clean = lm.model(input_ids=ids_BT, use_cache=False).logits.float()
    x_ND, y_ND = seen["x"].reshape(B * T, -1).float(), seen["y"].reshape(B * T, -1).float()
    positions_N = torch.arange(T, device=ids_BT.device).repeat(B)
    if sinks is None:
        keep_N = torch.ones(B * T, dtype=torch.bool, device=ids_BT.device)
    else:
        keep_N = ~sink_mask(positions_N, x_ND.norm(dim=-1), sinks.median_norm, sinks.norm_factor)
    keep_BT1 = keep_N.reshape(B, T, 1)

    codes = tc.encode_sparse(x_ND[keep_N])
    y, y_hat = y_ND[keep_N], tc.output(x_ND[keep_N], codes)
    s.sq_resid += float((y - y_hat).double().pow(2).sum())
    s.sq_y += float(y.double().pow(2).sum())
    s.sum_y = y.double().sum(0) if s.sum_y is None else s.sum_y + y.double().sum(0)
    s.l0 += float((codes.acts > 0).sum())
    s.n += y.shape[0]
    s.sinks += int((~keep_N).sum())
    s.tokens += B * T

    # The MLP replaced: its output, at ordinary tokens, is the transcoder's of this pass's own input.
    current: dict[str, Tensor] = {}

    def replace(y_BTD: Tensor) -> Tensor:
        if "x" not in current:
            raise InvalidSpec(f"{hook} comes after {target_hook} in the forward pass", field="spec.hook")
        x = current["x"]
        predicted = tc.transcode(x.reshape(B * T, -1).float()).reshape(y_BTD.shape).to(y_BTD.dtype)
        return torch.where(keep_BT1, predicted, y_BTD)

    with (
        hookpoints.read(lm.model, hook, lambda x: current.__setitem__("x", x)),
        splice(lm.model, target_hook, replace),
    ):
        logits_tc = lm.model(input_ids=ids_BT, use_cache=False).logits.float()
    with splice(lm.model, target_hook, lambda y_BTD: torch.where(keep_BT1, torch.zeros_like(y_BTD), y_BTD)):
        logits_zero = lm.model(input_ids=ids_BT, use_cache=False).logits.float()

    loss_mask = keep_N.reshape(B, T)[:, :-1]  # position t predicts token t + 1
    targets = ids_BT[:, 1:, None]
    logp_clean = F.log_softmax(logits_clean[:, :-1], dim=-1)
    for name, logits in (("clean", logits_clean), ("transcoder", logits_tc), ("zero", logits_zero)):
        logp = logp_clean if name == "clean" else F.log_softmax(logits[:, :-1], dim=-1)
        s.ce[name] += float(-logp.gather(-1, targets)[..., 0][loss_mask].sum())
        if name != "clean":  # KL(clean || spliced), as SAELens
            s.kl[name] += float((logp_clean.exp() * (logp_clean - logp)).sum(-1)[loss_mask].sum())
    s.n_loss += int(loss_mask.sum())
