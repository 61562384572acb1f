"""The harvest spec: run a corpus through a model and store activations at hook points."""

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


class HarvestSpec(Frozen):
    """Run a corpus through a model and store activations at one or more hook points."""

    kind: Literal["harvest"] = "harvest"
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
    """Seed of the document order."""
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
        n_contexts = math.ceil(self.max_tokens / self.context_len)
        return math.ceil(n_contexts / (self.shard_tokens // self.context_len))
