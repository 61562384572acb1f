"""Steer: generate with SAE features boosted, clamped or ablated at a hook point, and measure what
that did (KL from the default next-token distribution, perplexity under the unsteered model).

- add:    x + value * W_dec[f] (the feature's unit decoder direction, in residual units)
- clamp:  the feature's activation set to `value`, the SAE's error term kept:
          x + (value - a_f(x)) * W_dec[f], so nothing but that feature changes
- ablate: clamp to 0
- scale:  the activation multiplied by `value`, error term kept (scale 1 changes nothing)
Positions: all tokens, the prompt's only, or the generated ones only.
Conditional edits: an edit with a trigger applies at a token only while the trigger feature's
activation there exceeds its threshold. Every trigger and every activation an edit reads is taken
from the hook's activations as they arrive at that token, before any edit of that token: the edits
of one token then sum independently of their order, and no edit can switch its own trigger (or
another's) on or off at the token it edits. Edits of earlier tokens do reach it, through attention,
as they reach everything downstream.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import StoppingCriteria, StoppingCriteriaList

from saeq.errors import InvalidSpec
from saeq.ml.models import LoadedModel
from saeq.ml.sae import SparseAutoencoder
from saeq.ml.splice import splice

Mode = Literal["add", "clamp", "ablate", "scale"]
Positions = Literal["all", "prompt", "generated"]


@dataclass(frozen=True)
class FeatureTrigger:
    feature: int
    threshold: float = 0.0
    """The edit applies where the feature's activation is strictly greater."""


@dataclass(frozen=True)
class FeatureEdit:
    feature: int
    mode: Mode
    value: float = 0.0
    positions: Positions = "all"
    trigger: FeatureTrigger | None = None
    """None: unconditional."""


def check_edits(edits: Sequence[FeatureEdit], sae: SparseAutoencoder, field: str = "spec.interventions") -> None:
    for i, e in enumerate(edits):
        named = [(e.feature, f"{field}[{i}].feature")]
        if e.trigger is not None:
            named.append((e.trigger.feature, f"{field}[{i}].trigger.feature"))
        for feature, where in named:
            if not 0 <= feature < sae.d_sae:
                raise InvalidSpec(
                    f"feature {feature} is not in 0..{sae.d_sae - 1} (the SAE has d_sae={sae.d_sae})", field=where
                )


class Steering:
    """The edit function for `splice`, tracking absolute positions across KV-cached calls: the
    first call sees the prompt (T = prompt length), later calls one new token each."""

    def __init__(self, sae: SparseAutoencoder, edits: Sequence[FeatureEdit], prompt_len: int):
        self.sae, self.edits, self.prompt_len = sae, list(edits), prompt_len
        self.seen = 0  # tokens of the sequence already through the hook
        self.triggered = 0
        """Tokens at which at least one conditional edit's trigger fired (prompt and generation)."""
        read = {e.feature for e in self.edits if e.mode != "add"}
        read |= {e.trigger.feature for e in self.edits if e.trigger is not None}
        self.feats = torch.tensor(sorted(read)) if read else None

    def reset(self) -> None:
        self.seen = self.triggered = 0

    def __call__(self, x_BTD: Tensor) -> Tensor:
        B, T, D = x_BTD.shape
        pos_T = torch.arange(self.seen, self.seen + T, device=x_BTD.device)
        self.seen += T
        acts: dict[int, Tensor] = {}  # of the features scaled, ablated, clamped or triggering, before any edit
        if self.feats is not None:
            acts_BTS = self.sae.encode(x_BTD.reshape(B * T, D).float()).reshape(B, T, -1)
            acts = {int(f): acts_BTS[..., int(f)] for f in self.feats}
        delta = torch.zeros(B, T, D, device=x_BTD.device, dtype=torch.float32)
        fired_BT = torch.zeros(B, T, dtype=torch.bool, device=x_BTD.device)
        for e in self.edits:
            where_BT = self._mask(e.positions, pos_T).expand(B, T)
            if e.trigger is not None:
                where_BT = where_BT & (acts[e.trigger.feature] > e.trigger.threshold)
                fired_BT |= where_BT
            if not where_BT.any():
                continue
            direction_D = self.sae.W_dec[e.feature].float()
            if e.mode == "add":
                coeff_BT = torch.full((B, T), e.value, device=x_BTD.device)
            elif e.mode == "scale":
                coeff_BT = (e.value - 1.0) * acts[e.feature]
            else:
                target = 0.0 if e.mode == "ablate" else e.value
                coeff_BT = target - acts[e.feature]
            delta += (coeff_BT * where_BT)[..., None] * direction_D
        self.triggered += int(fired_BT.any(0).sum())
        return (x_BTD.float() + delta).to(x_BTD.dtype) if delta.any() else x_BTD

    def _mask(self, positions: Positions, pos_T: Tensor) -> Tensor:
        if positions == "all":
            return torch.ones_like(pos_T, dtype=torch.bool)
        if positions == "prompt":
            return pos_T < self.prompt_len
        return pos_T >= self.prompt_len


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
) -> Completion:
    """Sample (greedy when temperature is 0) `max_new_tokens` after the prompt, with `edits`
    applied at `hook`; the same seed gives the same draws steered or not. `check` is called after
    every generated token and raises to stop (a cancel, a time limit)."""
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
        with splice(lm.model, hook, steering):
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


@torch.inference_mode()
def side_effects(
    lm: LoadedModel,
    prompt_ids: Sequence[int],
    completion: Completion,
    *,
    hook: str,
    sae: SparseAutoencoder,
    edits: Sequence[FeatureEdit],
) -> SideEffects:
    """Two forward passes over prompt + steered continuation: unsteered and steered."""
    if not completion.token_ids:
        return SideEffects(0.0, math.nan)
    seq = torch.tensor([list(prompt_ids) + completion.token_ids], device=lm.device)
    P = len(prompt_ids)
    logp_default = F.log_softmax(lm.model(seq, use_cache=False).logits[0].float(), -1)
    with splice(lm.model, hook, Steering(sae.to(lm.device), edits, P)):
        logp_steered = F.log_softmax(lm.model(seq, use_cache=False).logits[0].float(), -1)
    # Position t predicts token t+1: the generated tokens are predicted at P-1 .. end-1.
    at = slice(P - 1, seq.shape[1] - 1)
    kl = (logp_default[at].exp() * (logp_default[at] - logp_steered[at])).sum(-1).mean()
    nll = -logp_default[at].gather(-1, seq[0, P:, None])[:, 0].mean()
    return SideEffects(float(kl), float(nll.exp()))


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
