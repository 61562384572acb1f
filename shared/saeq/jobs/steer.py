"""Steer: generate with SAE features boosted, clamped or ablated at a hook point, and measure what
that did (KL from the default next-token distribution, perplexity under the unsteered model, each
with a 95% interval over the generated tokens).
The edits and where they apply: saeq.jobs.steer_edits; the hook functions that apply them:
saeq.jobs.steer_hooks (both re-exported here, the steer job's entry point).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import StoppingCriteria, StoppingCriteriaList

from saeq.jobs.steer_edits import FeatureEdit, FeatureTrigger, Mode, Positions, SteerSites, check_edits, steer_sites
from saeq.jobs.steer_hooks import Steering
from saeq.ml.intervals import bootstrap_mean
from saeq.ml.models import LoadedModel
from saeq.ml.sae import SparseAutoencoder
from saeq.specs.estimates import Estimate

__all__ = [
    "Completion",
    "FeatureEdit",
    "FeatureTrigger",
    "Mode",
    "Positions",
    "SideEffects",
    "SteerSites",
    "Steering",
    "chat_prompt",
    "check_edits",
    "generate",
    "side_effects",
    "steer_sites",
    "token_intervals",
]


@dataclass
class Completion:
    text: str
    token_ids: list[int]
    """The generated tokens only."""
    triggered_tokens: int = 0
    """Tokens (prompt and generated) at which a conditional edit applied: 0 where none fired."""


@torch.inference_mode()
def generate(
    lm: LoadedModel,
    prompt_ids: Sequence[int],
    *,
    max_new_tokens: int,
    hook: str | None = None,
    sae: SparseAutoencoder | None = None,
    edits: Sequence[FeatureEdit] = (),
    temperature: float = 0.0,
    seed: int = 0,
    min_new_tokens: int = 0,
    check: Callable[[], None] | None = None,
    sites: SteerSites | None = None,
) -> Completion:
    """Sample (greedy when temperature is 0) `max_new_tokens` after the prompt, with `edits`
    applied at `hook` (or at a coder's `sites`); the same seed gives the same draws steered or not.
    `check` is called after every generated token and raises to stop (a cancel, a time limit)."""
    ids = torch.tensor([list(prompt_ids)], device=lm.device)
    tokenizer = lm.tokenizer
    # (1, T) ids -> (1, T + new) ids: without return_dict_in_generate, generate returns the ids
    # (transformers types it as a union with its output classes).
    model_generate: Callable[..., Tensor] = lm.model.generate  # pyright: ignore[reportAssignmentType]
    gen_kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "min_new_tokens": min_new_tokens,
        "pad_token_id": tokenizer.pad_token_id or tokenizer.eos_token_id,
    }
    if check is not None:
        gen_kwargs["stopping_criteria"] = StoppingCriteriaList([_Checked(check)])
    if temperature > 0:
        gen_kwargs.update(do_sample=True, temperature=temperature, top_k=0, top_p=1.0)
    else:
        gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    torch.manual_seed(seed)
    if edits:
        assert sae is not None and hook is not None  # edits act on an SAE's features at its hook
        steering = Steering(sae.to(lm.device), edits, ids.shape[1])
        with steering.attached(lm.model, sites or SteerSites((hook,), (hook,))):
            out = model_generate(ids, attention_mask=torch.ones_like(ids), **gen_kwargs)
        triggered = steering.triggered
    else:
        out = model_generate(ids, attention_mask=torch.ones_like(ids), **gen_kwargs)
        triggered = 0
    new = out[0, ids.shape[1] :].tolist()
    text = tokenizer.decode(new, skip_special_tokens=True)
    assert isinstance(text, str)  # one sequence of ids decodes to one string
    return Completion(text, new, triggered)


class _Checked(StoppingCriteria):
    """Runs a callback between tokens; it stops generation by raising, never by returning."""

    def __init__(self, check: Callable[[], None]):
        self.check = check

    def __call__(self, input_ids: Tensor, scores: Tensor, **_) -> Tensor:
        self.check()
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


@dataclass(frozen=True)
class SideEffects:
    kl_from_default: float
    """Mean over generated positions of KL(p_default || p_steered) of the next token, both read
    on the steered text (nats)."""
    perplexity_unsteered: float
    """exp(mean NLL) of the steered continuation under the unsteered model."""
    intervals: dict[str, Estimate] = field(default_factory=dict)
    """95% intervals of both over the generated tokens (token_intervals), where both bounds are
    finite: none for a single generated token, or when the edits overflowed the model's dtype."""


@torch.inference_mode()
def side_effects(
    lm: LoadedModel,
    prompt_ids: Sequence[int],
    completion: Completion,
    *,
    hook: str,
    sae: SparseAutoencoder,
    edits: Sequence[FeatureEdit],
    sites: SteerSites | None = None,
) -> SideEffects:
    """Two forward passes over prompt + steered continuation: unsteered and steered."""
    if not completion.token_ids:
        return SideEffects(0.0, math.nan)
    seq = torch.tensor([list(prompt_ids) + completion.token_ids], device=lm.device)
    P = len(prompt_ids)
    logp_default = F.log_softmax(lm.model(seq, use_cache=False).logits[0].float(), -1)
    with Steering(sae.to(lm.device), edits, P).attached(lm.model, sites or SteerSites((hook,), (hook,))):
        logp_steered = F.log_softmax(lm.model(seq, use_cache=False).logits[0].float(), -1)
    # Position t predicts token t+1: the generated tokens are predicted at P-1 .. end-1.
    at = slice(P - 1, seq.shape[1] - 1)
    kl_T = (logp_default[at].exp() * (logp_default[at] - logp_steered[at])).sum(-1)
    nll_T = -logp_default[at].gather(-1, seq[0, P:, None])[:, 0]
    kl, perplexity = float(kl_T.mean()), float(nll_T.mean().exp())
    intervals = token_intervals(kl_T.cpu().double().numpy(), nll_T.cpu().double().numpy(), kl, perplexity)
    return SideEffects(kl, perplexity, intervals)


def token_intervals(kl_T: np.ndarray, nll_T: np.ndarray, kl: float, perplexity: float) -> dict[str, Estimate]:
    """The mean KL and exp(mean NLL) with percentile bootstrap intervals over the T generated
    tokens: the mean NLL is bootstrapped and its bounds exponentiated (exp is monotone, so they are
    the perplexity's bounds). The tokens of one generation are correlated (each is conditioned on
    the ones before, and a topic persists), so treating them as independent draws makes this
    interval a lower bound on the spread of these figures, not a full account of it."""
    ones_T = np.ones(len(kl_T))
    kl_est = bootstrap_mean(kl_T, ones_T, unit="generated tokens", value=kl)
    nll_est = bootstrap_mean(nll_T, ones_T, unit="generated tokens")
    ppl_est = nll_est.model_copy(
        update={"value": perplexity, "low": math.exp(nll_est.low), "high": math.exp(nll_est.high)}
    )
    out = {"kl_from_default": kl_est, "perplexity_unsteered": ppl_est}
    return {k: e for k, e in out.items() if math.isfinite(e.low) and math.isfinite(e.high)}


def chat_prompt(lm: LoadedModel, messages: list[dict]) -> list[int]:
    """Token ids of a chat, by the tokenizer's chat template when it has one."""
    tok = lm.tokenizer
    if getattr(tok, "chat_template", None):
        # Text first, then ids: what tokenize=True returns differs between transformers versions.
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert isinstance(text, str)  # tokenize=False: the rendered chat
    else:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    return tok(text, add_special_tokens=False)["input_ids"]
