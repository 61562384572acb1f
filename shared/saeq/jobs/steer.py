"""Steer: generate with SAE features boosted, clamped or ablated at a hook point, and measure what
that did (KL from the default next-token distribution, perplexity under the unsteered model).

- add:    x + value * W_dec[f] (the feature's unit decoder direction, in residual units)
- clamp:  the feature's activation set to `value`, the SAE's error term kept:
          x + (value - a_f(x)) * W_dec[f], so nothing but that feature changes
- ablate: clamp to 0
- scale:  the activation multiplied by `value`, error term kept (scale 1 changes nothing)
- cap:    the projection of x on the feature's unit decoder direction d raised to at least `value`:
          x + max(0, value - x.d) * d, the part of x orthogonal to d untouched (Neuronpedia's
          steering by orthogonal decomposition); it boosts only, never lowers a projection
Positions: all tokens, the prompt's only, or the generated ones only.
Conditional edits: an edit with a trigger applies at a token only while the trigger feature's
activation there exceeds its threshold. Every trigger and every activation an edit reads is taken
from the hook's activations as they arrive at that token, before any edit of that token: the edits
of one token then sum independently of their order, and no edit can switch its own trigger (or
another's) on or off at the token it edits. Edits of earlier tokens do reach it, through attention,
as they reach everything downstream.
Coders (SteerSites, docs/steer.md "Coders"): a transcoder's features are read at its input hook and
its decoder written at its output hook; a crosscoder's decoder writes each layer's slice at that
layer, and only `add` applies to it (its features read every layer at once: acausal).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import StoppingCriteria, StoppingCriteriaList

from saeq.errors import InvalidSpec
from saeq.ml import hookpoints
from saeq.ml.models import LoadedModel
from saeq.ml.sae import SparseAutoencoder, TopKCrosscoder
from saeq.ml.splice import forward_order, splice

Mode = Literal["add", "clamp", "ablate", "scale", "cap"]
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


@dataclass(frozen=True)
class SteerSites:
    """Where a coder's features are read and its decoder is written."""

    read: tuple[str, ...]
    """Hooks whose activations, side by side in this order, the coder encodes."""
    write: tuple[str, ...]
    """Hooks the decoder writes, each its block of W_dec's columns, in this order."""

    @property
    def acausal(self) -> bool:
        """The features read several hooks of a token at once: at the first one written, the
        others' activations of that token do not exist yet."""
        return len(self.read) > 1


def steer_sites(
    sae: SparseAutoencoder,
    hook: str,
    *,
    target_hook: str | None = None,
    layer_hooks: Sequence[str] | None = None,
    field: str = "spec.sae",
) -> SteerSites:
    """An SAE reads and writes `hook`; a transcoder reads `hook` and writes `target_hook`; a
    crosscoder reads and writes each of `layer_hooks` (its input's blocks, in order)."""
    if isinstance(sae, TopKCrosscoder):
        if not layer_hooks or len(layer_hooks) != sae.n_layers:
            raise InvalidSpec(
                f"the crosscoder covers {sae.n_layers} hooks, and its train job names "
                f"{len(layer_hooks or ())}: steer a crosscoder trained by a train job (activations.hooks)",
                field=field,
            )
        return SteerSites(tuple(layer_hooks), tuple(layer_hooks))
    if sae.is_transcoder:
        if target_hook is None:
            raise InvalidSpec(
                "a transcoder writes its output hook, which only its train job names "
                "(activations.target_hook): steer a transcoder trained by a train job",
                field=field,
            )
        if forward_order(target_hook) <= forward_order(hook):
            raise InvalidSpec(
                f"the transcoder reads {hook} and writes {target_hook}, which the forward pass reaches "
                "first: its features must be read before its output is written",
                field=field,
            )
        return SteerSites((hook,), (target_hook,))
    return SteerSites((hook,), (hook,))


def check_edits(
    edits: Sequence[FeatureEdit],
    sae: SparseAutoencoder,
    field: str = "spec.interventions",
    sites: SteerSites | None = None,
) -> None:
    for i, e in enumerate(edits):
        if sites is not None and sites.acausal and (e.mode != "add" or e.trigger is not None):
            where = f"{field}[{i}].mode" if e.mode != "add" else f"{field}[{i}].trigger"
            raise InvalidSpec(
                f"a crosscoder's feature activation reads all {len(sites.read)} of its layers at once, so "
                "at its first layer the token's later layers do not exist yet: clamp, ablate, scale and "
                "triggers, which read it, are refused; add writes each layer's decoder slice there",
                field=where,
            )
        if e.mode == "cap" and sites is not None and sites.read != sites.write:
            raise InvalidSpec(
                "cap lifts the projection of the hook's activation on the feature's decoder direction: "
                "a coder writes another hook than it reads, so cap applies to SAEs only (use add)",
                field=f"{field}[{i}].mode",
            )
        named = [(e.feature, f"{field}[{i}].feature")]
        if e.trigger is not None:
            named.append((e.trigger.feature, f"{field}[{i}].trigger.feature"))
        for feature, where in named:
            if not 0 <= feature < sae.d_sae:
                raise InvalidSpec(
                    f"feature {feature} is not in 0..{sae.d_sae - 1} (the SAE has d_sae={sae.d_sae})", field=where
                )


class Steering:
    """The edit functions for the hook points, tracking absolute positions across KV-cached calls:
    the first call sees the prompt (T = prompt length), later calls one new token each. Called
    directly it reads and writes one hook (an SAE's); `attached` hooks it into a model at `sites`."""

    def __init__(self, sae: SparseAutoencoder, edits: Sequence[FeatureEdit], prompt_len: int):
        self.sae, self.edits, self.prompt_len = sae, list(edits), prompt_len
        self.seen = 0  # tokens of the sequence already through the read hook
        self.written: dict[int, int] = {}  # per write site of a coder: tokens already through it
        self.triggered = 0
        """Tokens at which at least one conditional edit's trigger fired (prompt and generation)."""
        read = {e.feature for e in self.edits if e.mode not in ("add", "cap")}
        read |= {e.trigger.feature for e in self.edits if e.trigger is not None}
        self.feats = torch.tensor(sorted(read)) if read else None
        self._coeffs: list[tuple[FeatureEdit, Tensor]] = []  # each applying edit's coefficient (B, T), last read
        self._projections: dict[int, Tensor] = {}  # cap: feature -> (B, T) projection, last read

    def reset(self) -> None:
        self.seen = self.triggered = 0
        self.written = {}

    def __call__(self, x_BTD: Tensor) -> Tensor:
        self.read(x_BTD)
        return self._write(x_BTD, self.sae.W_dec, None)

    @contextlib.contextmanager
    def attached(self, model: torch.nn.Module, sites: SteerSites) -> Iterator[None]:
        """Read the features at `sites.read`, write the decoder's blocks at `sites.write` (add: the
        block of the feature's unit decoder row, so a crosscoder's layers share one unit vector)."""
        with contextlib.ExitStack() as stack:
            if sites.read == sites.write and len(sites.read) == 1:
                stack.enter_context(splice(model, sites.read[0], self))
            else:
                if not sites.acausal:
                    stack.enter_context(hookpoints.read(model, sites.read[0], self.read))
                W_SLD = self.sae.W_dec.view(self.sae.d_sae, len(sites.write), -1)
                unit_S = 1.0 / self.sae.W_dec.float().norm(dim=1).clamp_min(1e-12)
                for i, hook in enumerate(sites.write):
                    write = functools.partial(self._write_site, i=i, hook=hook, sites=sites, W_dec_SD=W_SLD[:, i])
                    stack.enter_context(splice(model, hook, lambda x, write=write: write(x, unit_S=unit_S)))
            yield

    def read(self, x_BTD: Tensor) -> None:
        """Features and triggers at these tokens, before any edit of them -> each edit's coefficient."""
        B, T, D = x_BTD.shape
        acts: dict[int, Tensor] = {}  # of the features scaled, ablated, clamped or triggering, before any edit
        if self.feats is not None:
            acts_BTS = self.sae.encode(x_BTD.reshape(B * T, D).float()).reshape(B, T, -1)
            acts = {int(f): acts_BTS[..., int(f)] for f in self.feats}
        # cap: x's projection on each capped feature's unit decoder direction, before any edit
        self._projections = {e.feature: x_BTD.float() @ self._unit(e.feature) for e in self.edits if e.mode == "cap"}
        self._plan(B, T, x_BTD.device, acts)

    def _unit(self, feature: int) -> Tensor:
        row_D = self.sae.W_dec[feature].float()
        return row_D / row_D.norm().clamp_min(1e-12)

    def _plan(self, B: int, T: int, device: torch.device, acts: dict[int, Tensor]) -> None:
        pos_T = torch.arange(self.seen, self.seen + T, device=device)
        self.seen += T
        fired_BT = torch.zeros(B, T, dtype=torch.bool, device=device)
        self._coeffs = []
        for e in self.edits:
            where_BT = self._mask(e.positions, pos_T).expand(B, T)
            if e.trigger is not None:
                where_BT = where_BT & (acts[e.trigger.feature] > e.trigger.threshold)
                fired_BT |= where_BT
            if not where_BT.any():
                continue
            if e.mode == "add":
                coeff_BT = torch.full((B, T), e.value, device=device)
            elif e.mode == "cap":  # raise the projection to the cap, along W_dec[f] (hence / its norm)
                lift_BT = (e.value - self._projections[e.feature]).clamp_min(0.0)
                coeff_BT = lift_BT / self.sae.W_dec[e.feature].float().norm().clamp_min(1e-12)
            elif e.mode == "scale":
                coeff_BT = (e.value - 1.0) * acts[e.feature]
            else:
                target = 0.0 if e.mode == "ablate" else e.value
                coeff_BT = target - acts[e.feature]
            self._coeffs.append((e, coeff_BT * where_BT))
        self.triggered += int(fired_BT.any(0).sum())

    def _write_site(
        self, x_BTD: Tensor, *, i: int, hook: str, sites: SteerSites, W_dec_SD: Tensor, unit_S: Tensor
    ) -> Tensor:
        """A coder's write site i. A crosscoder (add only) reads nothing: each site plans its own
        tokens. A transcoder's write site fires after its read hook, on the tokens it read."""
        B, T, _ = x_BTD.shape
        done = self.written.get(i, 0)
        self.written[i] = done + T
        if sites.acausal:
            self.seen = done
            self._plan(B, T, x_BTD.device, {})
        elif self.seen != done + T:
            raise RuntimeError(f"{hook} was written before {sites.read[0]} was read: the coder writes upstream")
        return self._write(x_BTD, W_dec_SD, unit_S)

    def _write(self, x_BTD: Tensor, W_dec_SD: Tensor, unit_S: Tensor | None) -> Tensor:
        """x + the sum over applying edits of coefficient x the feature's decoder row (block) W_dec_SD[f];
        add's coefficient over the row's norm when `unit_S` (1 / the full rows' norms) is given."""
        if not self._coeffs:
            return x_BTD
        delta = torch.zeros(*x_BTD.shape, device=x_BTD.device, dtype=torch.float32)
        for e, coeff_BT in self._coeffs:
            scale = float(unit_S[e.feature]) if unit_S is not None and e.mode == "add" else 1.0
            delta += (coeff_BT * scale)[..., None] * W_dec_SD[e.feature].float()
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
