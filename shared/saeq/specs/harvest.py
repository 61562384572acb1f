"""The harvest spec: run a corpus through a model and store activations at hook points, or draw
synthetic activations with known features (`source: synthetic`, docs/synthetic.md)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, field_validator, model_validator

from saeq import hooks
from saeq.specs.common import (
    BUILTIN_MODEL,
    BUILTIN_N_LAYERS,
    BuiltinCorpus,
    CorpusSpec,
    Frozen,
    ModelSpec,
    Seed,
    invalid,
)


class SyntheticActivations(Frozen):
    """A generator of activations with known features (saeq.ml.synthetic, whose SyntheticConfig has
    these fields): each token is x = sum_i m_i f_i + bias + noise over `n_features` random unit
    features f_i in `d_model` dimensions, the feature of rank r firing with probability
    max(max_prob * r^-zipf_exponent, min_prob)."""

    n_features: int = Field(default=512, ge=1, le=65_536)
    """True features; more than d_model puts them in superposition."""
    d_model: int = Field(default=64, ge=2, le=8192)
    """Width of the activations (the SAE's d_in)."""
    zipf_exponent: float = Field(default=1.0, ge=0.0, le=10.0)
    max_prob: float = Field(default=0.3, gt=0.0, le=1.0)
    """Firing probability of the most frequent feature."""
    min_prob: float = Field(default=1e-4, gt=0.0, le=1.0)
    """Floor of every feature's firing probability."""
    n_parents: int = Field(default=0, ge=0, le=4096)
    """Hierarchies: this many parents (the most frequent features), each with `n_children` children
    drawn from the rest; a child fires only when its parent does."""
    n_children: int = Field(default=4, ge=1, le=64)
    mutually_exclusive: bool = True
    """At most one child of a parent fires at a time."""
    n_groups: int = Field(default=0, ge=0, le=4096)
    """Correlated groups of `group_size` features whose firing shares a Gaussian factor of
    correlation `group_correlation` (each feature's own probability is kept)."""
    group_size: int = Field(default=8, ge=2, le=1024)
    group_correlation: float = Field(default=0.5, ge=0.0, lt=1.0)
    magnitude_mean: float = Field(default=1.0, gt=0.0, le=1e3)
    magnitude_std: float = Field(default=0.0, ge=0.0, le=1e3)
    """A firing feature's coefficient is |N(magnitude_mean, magnitude_std^2)|."""
    noise_std: float = Field(default=0.0, ge=0.0, le=1e3)
    """Isotropic Gaussian noise per dimension."""
    bias_norm: float = Field(default=0.0, ge=0.0, le=1e4)
    """A constant offset of this norm on every token."""
    seed: Seed = 0
    """Seed of the features, probabilities, hierarchies and groups (the token stream's is the
    harvest's `seed`)."""

    @model_validator(mode="after")
    def _consistent(self) -> SyntheticActivations:
        if self.min_prob > self.max_prob:
            raise invalid(self, "min_prob", f"min_prob={self.min_prob:g} exceeds max_prob={self.max_prob:g}")
        needed = self.n_parents * self.n_children + self.n_groups * self.group_size
        if needed > self.n_features - self.n_parents:
            raise invalid(
                self,
                "n_parents" if self.n_parents else "n_groups",
                f"{self.n_parents} parents x {self.n_children} children and {self.n_groups} groups x "
                f"{self.group_size} need {needed} features besides the parents; n_features={self.n_features} "
                f"leaves {self.n_features - self.n_parents}",
            )
        if self.n_features * self.d_model > 1 << 26:
            raise invalid(
                self, "n_features", f"n_features x d_model = {self.n_features * self.d_model:,} exceeds {1 << 26:,}"
            )
        return self


# What a synthetic harvest has no use for (it runs no model over no corpus): left at their defaults.
_MODEL_ONLY_FIELDS = ("model", "corpus", "context_len", "batch_size", "prepend_bos", "doc_separator", "slices")


class HarvestSpec(Frozen):
    """Run a corpus through a model and store activations at one or more hook points; or, with
    `source: synthetic`, store activations drawn from a generator with known features."""

    kind: Literal["harvest"] = "harvest"
    source: Literal["model", "synthetic"] = "model"
    """`model`: run `corpus` through `model`. `synthetic`: draw tokens from `synthetic`'s generator
    (no model, no corpus; one hook, its name a label) and store its true features beside the
    shards, so train jobs on it report feature recovery (docs/synthetic.md)."""
    synthetic: SyntheticActivations | None = None
    """The generator of `source: synthetic` (None there: its defaults)."""
    model: ModelSpec = ModelSpec()
    corpus: CorpusSpec = BuiltinCorpus()
    hooks: list[str] = Field(default=["blocks.14.hook_resid_post"], min_length=1, max_length=16)
    """Hook points, `blocks.{i}.hook_{resid_pre,resid_post,mlp_out,attn_out}` with i counted from
    0. `blocks.14.hook_resid_post` is "layer 15", transformers' `hidden_states[15]`."""
    max_tokens: int = Field(default=131_072, gt=0, le=10_000_000_000)
    """Token budget: the job stops after this many tokens (rounded up to whole contexts)."""
    context_len: int = Field(default=128, ge=2, le=32_768)
    batch_size: int = Field(default=16, ge=1, le=4096)
    """Contexts per forward pass."""
    prepend_bos: bool = False
    """Put the tokenizer's BOS token at position 0 of every context."""
    doc_separator: str = Field(default="\n\n", max_length=16)
    """Text placed between documents when they are packed into contexts."""
    shard_tokens: int = Field(default=16_384, ge=128, le=4_194_304)
    """Tokens per activation shard (rounded down to whole contexts). A crash loses at most one."""
    dtype: Literal["float32", "bfloat16"] = "bfloat16"
    """Dtype of the stored activations: bfloat16 (half the bytes to store and read; its FVU and
    CE-loss-recovered cost on the demo is in docs/benchmarks.md) or float32 on request."""
    sink_norm_factor: float = Field(default=5.0, gt=1.0)
    """A token whose norm exceeds this many times the median norm counts as an attention sink
    (recorded in the manifest; training and evaluation apply the rule)."""
    seed: Seed = 0
    """Seed of the document order (synthetic: of the token stream)."""
    slices: int = Field(default=1, ge=1, le=64)
    """Split the harvest across this many workers: each runs a contiguous range of the shards a
    single harvest writes (same keys, same bytes) and one manifest is merged at the end."""

    @field_validator("hooks")
    @classmethod
    def _hook_names(cls, names: list[str]) -> list[str]:
        for i, name in enumerate(names):
            try:
                hooks.parse(name)
            except ValueError as e:
                raise ValueError(f"hooks[{i}]: {e}") from None
        if len(set(names)) != len(names):
            raise ValueError("hooks: duplicate hook point")
        return names

    @model_validator(mode="before")
    @classmethod
    def _default_generator(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("source") == "synthetic" and data.get("synthetic") is None:
            return {**data, "synthetic": {}}
        return data

    @model_validator(mode="after")
    def _synthetic_fields(self) -> HarvestSpec:
        if self.source == "model":
            if self.synthetic is not None:
                raise invalid(self, "synthetic", "synthetic applies to source: synthetic, not source: model")
            return self
        for name in _MODEL_ONLY_FIELDS:
            # A non-default value only: a stored spec is re-read with every field written out.
            if getattr(self, name) != type(self).model_fields[name].get_default(call_default_factory=True):
                raise invalid(self, name, f"{name} applies to source: model; a synthetic harvest runs no model")
        if len(self.hooks) != 1:
            raise invalid(self, "hooks", "a synthetic harvest stores one hook (its name is only a label)")
        return self

    @model_validator(mode="after")
    def _builtin_model_limits(self) -> HarvestSpec:
        if self.model.name == BUILTIN_MODEL:
            for i, name in enumerate(self.hooks):
                block = hooks.parse(name).block
                if block >= BUILTIN_N_LAYERS:
                    raise invalid(
                        self,
                        f"hooks.{i}",
                        f"{name!r} asks for block {block}, but {BUILTIN_MODEL} has "
                        f"{BUILTIN_N_LAYERS} blocks (0..{BUILTIN_N_LAYERS - 1})",
                    )
        if self.shard_tokens < self.context_len:
            raise invalid(self, "shard_tokens", "shard_tokens must hold at least one context (>= context_len)")
        if self.slices > self.max_shards:
            raise invalid(
                self, "slices", f"slices={self.slices} exceeds the {self.max_shards} shards this harvest writes at most"
            )
        return self

    @property
    def max_shards(self) -> int:
        """Shards the token budget fills (fewer when the corpus ends first): what `slices` divides."""
        if self.source == "synthetic":  # no contexts: shards of exactly shard_tokens rows
            return math.ceil(self.max_tokens / self.shard_tokens)
        n_contexts = math.ceil(self.max_tokens / self.context_len)
        return math.ceil(n_contexts / (self.shard_tokens // self.context_len))
