"""Evaluate a crosscoder in the model: FVU per layer on ordinary tokens, and the model's loss with
every layer it covers spliced at once (CE loss recovered, KL).

The crosscoder is acausal: each layer's reconstruction reads every layer's clean activation, so one
clean pass captures them all, and a second pass replaces each covered hook's output by its layer's
reconstruction (a later layer's own computation is overwritten by its reconstruction too). This is
the evaluate job's pass (saeq.jobs.evaluate.evaluate_sae with `layer_hooks`: one accounting for every
kind of coder), its metrics under a crosscoder's names: CE loss recovered = (CE_zero - CE_crosscoder)
/ (CE_zero - CE_clean), CE_zero with every covered hook zero-ablated; KL(clean || spliced) per
next-token prediction. Attention sinks (by the first hook's norms, as in training) are left out of
every average and keep their clean activations in the splices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from torch import Tensor

from saeq.jobs.evaluate import EvalResult, evaluate_sae
from saeq.jobs.evaluate_transcoder import coder_counts, coder_metrics
from saeq.ml.models import LoadedModel
from saeq.ml.sae import TopKCrosscoder
from saeq.ml.sinks import SinkReference


@dataclass
class CrosscoderEvalResult:
    metrics: dict[str, float]
    """fvu (all layers), mse, l0; ce_clean, ce_crosscoder, ce_zero, ce_loss_recovered, kl_crosscoder,
    kl_zero (per next-token prediction from an ordinary position)."""
    fvu_per_layer: list[float]
    """FVU of each hook's reconstruction, in `hooks` order."""
    counts: dict[str, int] = field(default_factory=dict)
    """tokens (all read), ordinary_tokens, sinks_excluded, loss_positions."""
    full: EvalResult | None = None
    """Everything the evaluate job reports (its metric names, the 95% intervals, histograms)."""


def evaluate_crosscoder(
    cc: TopKCrosscoder,
    lm: LoadedModel,
    contexts: Iterable[Tensor],
    *,
    hooks: list[str],
    sinks: SinkReference | None,
    should_stop: Callable[[], bool] = lambda: False,
) -> CrosscoderEvalResult:
    """Metrics of `cc` over its `hooks` (in its rows' order) on batches of contexts (B, T) token ids."""
    r = evaluate_sae(
        cc, lm, hooks[0] if hooks else "", contexts, sinks=sinks, layer_hooks=hooks, should_stop=should_stop
    )
    assert r.fvu_per_layer is not None  # two or more hooks
    return CrosscoderEvalResult(coder_metrics(r, "crosscoder"), r.fvu_per_layer, coder_counts(r), r)
