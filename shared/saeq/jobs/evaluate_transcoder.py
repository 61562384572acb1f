"""Evaluate a transcoder: how well it predicts its target hook (the MLP's output) from its input hook,
and the model's loss with the MLP's output replaced by the transcoder's (CE loss recovered, KL).

The evaluate job's pass (saeq.jobs.evaluate.evaluate_sae with `target_hook`: one accounting for every
kind of coder), its metrics under a transcoder's names: FVU against the target over ordinary tokens;
CE loss recovered = (CE_zero - CE_transcoder) / (CE_zero - CE_clean), CE_zero with the target hook
zero-ablated; KL(clean || spliced) per next-token prediction. Attention sinks (by the input hook's
norms, as in training) are left out of every average and keep their own MLP output in the splices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from torch import Tensor

from saeq.jobs.evaluate import EvalResult, evaluate_sae
from saeq.ml.models import LoadedModel
from saeq.ml.sae import Transcoder
from saeq.ml.sinks import SinkReference


@dataclass
class TranscoderEvalResult:
    metrics: dict[str, float]
    """fvu, mse, l0 (ordinary tokens); ce_clean, ce_transcoder, ce_zero, ce_loss_recovered,
    kl_transcoder, kl_zero (per next-token prediction from an ordinary position)."""
    counts: dict[str, int] = field(default_factory=dict)
    """tokens (all read), ordinary_tokens, sinks_excluded, loss_positions."""
    full: EvalResult | None = None
    """Everything the evaluate job reports (its metric names, the 95% intervals, histograms)."""


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
    r = evaluate_sae(tc, lm, hook, contexts, sinks=sinks, target_hook=target_hook, should_stop=should_stop)
    return TranscoderEvalResult(coder_metrics(r, "transcoder"), coder_counts(r), r)


def coder_metrics(r: EvalResult, name: str) -> dict[str, float]:
    """The evaluate job's model-loss metrics under a coder's own names (ce_<name>, kl_<name>)."""
    m = r.metrics
    return {
        "fvu": m["fvu"],
        "mse": m["mse"],
        "l0": m["l0"],
        "ce_clean": m["ce_loss_clean"],
        f"ce_{name}": m["ce_loss_with_sae"],
        "ce_zero": m["ce_loss_with_ablation"],
        "ce_loss_recovered": m["ce_loss_recovered"],
        f"kl_{name}": m["kl_div_with_sae"],
        "kl_zero": m["kl_div_with_ablation"],
    }


def coder_counts(r: EvalResult) -> dict[str, int]:
    c = r.counts
    return {
        "tokens": c["n_tokens"],
        "ordinary_tokens": c["n_ordinary"],
        "sinks_excluded": c["n_sinks_excluded"],
        "loss_positions": c["n_loss_positions"],
    }
