"""The train spec: one or more SAE configurations trained on one read of a harvest."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, Tag, field_validator, model_validator

from saeq import hooks
from saeq.specs.architectures import SAE_ARCHITECTURES
from saeq.specs.common import (
    _SAE_NAME,
    BUILTIN_MODEL,
    BUILTIN_N_LAYERS,
    BuiltinCorpus,
    CorpusSpec,
    Frozen,
    HookName,
    ModelSpec,
    Seed,
    SinkRule,
    _tag,
    invalid,
)
from saeq.specs.train_seeds import check_seeds

# Fields that only some architectures read (SaeArchitecture.reads says which), in field order.
_ARCH_FIELDS = (
    "k",
    "aux_k",
    "auxk_alpha",
    "l1_coefficient",
    "jumprelu_init_threshold",
    "jumprelu_bandwidth",
    "l0_coefficient",
    "matryoshka_groups",
)


def _architecture_names(schema: dict) -> None:
    """The OpenAPI schema lists the architectures registered when it is built (plugins included)."""
    schema["enum"] = list(SAE_ARCHITECTURES.names())


class SaeConfig(Frozen):
    """One sparse autoencoder: x_hat = W_dec^T act(W_enc^T (x - b_dec) + b_enc) + b_dec."""

    name: str | None = Field(default=None, pattern=_SAE_NAME)
    """Name of this SAE in the job's outputs; None: `sae{i}` for the i-th of the list."""
    architecture: str = Field(default="topk", json_schema_extra=_architecture_names)
    """`topk`: the k largest latents per token (Gao et al. 2024). `batchtopk`: the k x batch
    largest over the whole batch, a learnt threshold at inference (exported as JumpReLU).
    `jumprelu`: a learnt threshold per latent, L0 penalty (Gemma Scope). `relu`: ReLU with an
    L1 penalty weighted by decoder norms (Anthropic, April 2024). `matryoshka_batchtopk`:
    batchtopk whose nested prefixes (`matryoshka_groups`) each learn to reconstruct (Bussmann et
    al. 2025). `topk_transcoder`, `topk_skip_transcoder`, `jumprelu_transcoder`,
    `jumprelu_skip_transcoder`: read `activations.hook`, predict `activations.target_hook`
    (docs/transcoders.md). `topk_crosscoder`: reads and reconstructs every hook of
    `activations.hooks` at once, its d_in their summed width (docs/crosscoders.md). Plugins add
    others (saeq.specs.architectures)."""
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
    normalize_decoder: bool | None = None
    """Keep decoder rows at unit norm: the gradient's component along each row is removed before
    the step and rows are renormalised after it. None: the architecture's default, off for the
    k-sparse SAEs (`topk`, `batchtopk`, `matryoshka_batchtopk`: free rows recover planted features
    better, docs/synthetic.md), on for the others."""
    decoder_init_norm: float | None = Field(default=None, gt=0.0, le=100.0)
    """Norm of the random initial decoder rows (the encoder starts as their transpose). None: 0.1
    where the rows train freely (as SAELens and Anthropic's April 2024 update start them), 1 where
    they are kept at unit norm."""
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
    matryoshka_groups: list[Annotated[int, Field(gt=0)]] | None = Field(default=None, min_length=1, max_length=64)
    """matryoshka_batchtopk (required there): sizes of the dictionary's consecutive latent groups,
    summing to d_sae; prefix i (groups 0..i) is trained to reconstruct alone, so the first groups
    learn the most general features."""

    @field_validator("architecture")
    @classmethod
    def _registered(cls, name: str) -> str:
        SAE_ARCHITECTURES.get(name)  # ValueError listing the registered names
        return name

    @model_validator(mode="after")
    def _consistent(self) -> SaeConfig:
        for name in _ARCH_FIELDS:
            archs = SAE_ARCHITECTURES.readers(name)
            # A non-default value only: a stored spec is re-read with every field written out.
            default = type(self).model_fields[name].default
            if getattr(self, name) != default and self.architecture not in archs:
                raise invalid(
                    self, name, f"{name} applies to architecture {' or '.join(archs)}, not {self.architecture}"
                )
        if self.matryoshka_groups is None and self.architecture in SAE_ARCHITECTURES.readers("matryoshka_groups"):
            raise invalid(
                self, "matryoshka_groups", f"{self.architecture} needs matryoshka_groups (sizes summing to d_sae)"
            )
        if self.d_sae is not None:
            groups = self.matryoshka_groups
            if groups is not None and sum(groups) != self.d_sae:
                raise invalid(
                    self, "matryoshka_groups", f"matryoshka_groups sum to {sum(groups)}, not d_sae={self.d_sae}"
                )
            if SAE_ARCHITECTURES.get(self.architecture).uses_k and self.k > self.d_sae:
                raise invalid(self, "k", f"k={self.k} exceeds d_sae={self.d_sae}")
            if self.aux_k is not None and self.aux_k > self.d_sae:
                raise invalid(self, "aux_k", f"aux_k={self.aux_k} exceeds d_sae={self.d_sae}")
        return self

    def keeps_unit_decoder(self) -> bool:
        """`normalize_decoder`, None resolved by the architecture."""
        if self.normalize_decoder is not None:
            return self.normalize_decoder
        return not SAE_ARCHITECTURES.get(self.architecture).free_decoder

    def initial_decoder_norm(self) -> float:
        """`decoder_init_norm`, None resolved by whether the rows train freely."""
        if self.decoder_init_norm is not None:
            return self.decoder_init_norm
        return 1.0 if self.keeps_unit_decoder() else 0.1


class ActivationsRef(Frozen):
    """Activations a harvest job stored."""

    source: Literal["harvest"] = Field(default="harvest", exclude=True)
    """Left out of the stored spec: a spec without `source` reads a harvest (as before online
    training existed)."""
    job_id: str = Field(pattern=r"^[0-9a-f]{32}$")
    """Id of a harvest job (it must have succeeded; list it in `depends_on` to wait for it)."""
    hook: HookName = "blocks.14.hook_resid_post"
    """One of that harvest's hook points (a transcoder's input, e.g. `blocks.14.ln2.hook_normalized`)."""
    target_hook: HookName | None = None
    """Transcoders only (required there): another hook point of the same harvest, of the same width,
    that they learn to predict from `hook`, token by token (e.g. `blocks.14.hook_mlp_out`)."""
    hooks: tuple[HookName, ...] | None = None
    """Crosscoders only (required there): 2..8 distinct hook points of that harvest, of one width,
    read and reconstructed together token by token (e.g. `blocks.{4,8,12}.hook_resid_post`).
    `hook` is the first of them (left out, it is taken from here)."""

    @model_validator(mode="before")
    @classmethod
    def _hook_from_hooks(cls, data: object) -> object:
        # a crosscoder's spec names its hooks once; `hook` (the sink rule's, the files' hook_name) is the first
        if isinstance(data, dict) and data.get("hooks") and "hook" not in data:
            return {**data, "hook": data["hooks"][0]}
        return data


class OnlineActivations(Frozen):
    """Activations read straight from the model's forward pass (harvest and train fused: nothing is
    stored but the SAEs). Contexts are packed and captured as a harvest of the same fields would
    (saeq.jobs.harvest); the first `validation_tokens` contexts are held out, and the sink rule's
    median norm is measured on the first shuffle chunk. Limits as HarvestSpec's."""

    source: Literal["online"]
    model: ModelSpec = ModelSpec()
    corpus: CorpusSpec = BuiltinCorpus()
    hook: HookName = "blocks.14.hook_resid_post"
    """The hook point read, `blocks.{i}.hook_{resid_pre,resid_post,mlp_out,attn_out}`."""
    context_len: int = Field(default=128, ge=2, le=32_768)
    batch_size: int = Field(default=16, ge=1, le=4096)
    """Contexts per forward pass."""
    prepend_bos: bool = False
    """Put the tokenizer's BOS token at position 0 of every context."""
    doc_separator: str = Field(default="\n\n", max_length=16)
    """Text placed between documents when they are packed into contexts."""
    sink_norm_factor: float = Field(default=5.0, gt=1.0)
    """A token whose norm exceeds this many times the median norm is an attention sink
    (`sinks.norm_factor`, when given, overrides it, as it overrides a harvest's)."""
    seed: Seed = 0
    """Seed of the document order (a harvest's `seed`); the TrainSpec's seeds the shuffle."""

    @model_validator(mode="after")
    def _builtin_model_limits(self) -> OnlineActivations:
        block = hooks.parse(self.hook).block
        if self.model.name == BUILTIN_MODEL and block >= BUILTIN_N_LAYERS:
            raise invalid(
                self,
                "hook",
                f"{self.hook!r} asks for block {block}, but {BUILTIN_MODEL} has "
                f"{BUILTIN_N_LAYERS} blocks (0..{BUILTIN_N_LAYERS - 1})",
            )
        return self


ActivationSource = Annotated[
    Annotated[ActivationsRef, Tag("harvest")] | Annotated[OnlineActivations, Tag("online")], _tag("harvest")
]
"""Where a train job's activations come from: a stored harvest (the default) or the model itself."""


class TrainSpec(Frozen):
    """Train one or more sparse autoencoders on one read of a harvest's activations.

    Every batch feeds every SAE, so several configurations cost one pass over the data.
    """

    kind: Literal["train"] = "train"
    activations: ActivationSource
    """A harvest's stored activations (`{"job_id", "hook"}`), or `{"source": "online", ...}`: read
    from the model's forward pass as training goes (each token seen once; no epochs)."""
    saes: list[SaeConfig] = Field(default=[SaeConfig()], min_length=1, max_length=16)
    """The SAEs to train, each with its own architecture, width and learning rate."""
    total_tokens: int = Field(default=3_276_800, gt=0, le=100_000_000_000)
    """Training tokens (token-steps); when the harvest holds fewer ordinary tokens, the data is
    read again in new epochs, each in a new order (the result says how many epochs). Online, the
    stream ends here: each token is trained on once."""
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
    seeds: list[Seed] | None = Field(default=None, min_length=1, max_length=16)
    """Train each of `saes` once per seed (1..16 distinct seeds), its initialisation drawn from that
    seed, all fed by one read of the data (in `seed`'s order), named `<name>-seed<s>`; the result's
    `seed_spread` gives each final figure's mean, sd, min and max over the seeds: the spread from
    initialisation alone. None: each once, from `seed`."""
    shuffle_tokens: int = Field(default=65_536, ge=1, le=1 << 30)
    """Shuffle buffer: whole shards are grouped into chunks of at least this many tokens, and
    rows are permuted within a chunk; the chunk order changes every epoch. Larger mixes
    documents better and costs memory (d_in x 4 bytes a token)."""
    validation_tokens: int = Field(default=16_384, ge=1, le=100_000_000)
    """Tokens held out from the end of the harvest (whole contexts) and never trained on; the
    result's metrics are measured on the ordinary ones among them. Online: the first ones of the
    stream."""
    checkpoint_every_tokens: int | None = Field(default=4_194_304, gt=0)
    """Save resumable state (weights, optimiser, data position) this often; None: never."""
    sinks: SinkRule = SinkRule()
    gpus: int = Field(default=1, ge=1, le=8)
    """GPUs of one node the job uses (it goes to the multi-GPU worker pool when above 1)."""
    parallel: Literal["sweep", "data"] = "sweep"
    """How several GPUs share the work: `sweep` places SAE i on GPU i % gpus, all fed by one
    read of the data; `data` trains every SAE data-parallel (torch.distributed), each GPU taking
    1/gpus of every batch, with the same result as one GPU on the whole batch."""

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
        check_seeds(self)
        self._check_transcoders()
        self._check_crosscoders()
        self._check_gpus()
        return self

    def _check_transcoders(self) -> None:
        """Transcoders read `hook` and predict `target_hook`; every SAE of the job reads the same
        batches, so a job trains transcoders only or SAEs only."""
        target = getattr(self.activations, "target_hook", None)
        for i, cfg in enumerate(self.saes):
            transcoder = SAE_ARCHITECTURES.get(cfg.architecture).transcoder
            if transcoder and target is None:
                raise invalid(
                    self,
                    "activations.target_hook",
                    f"saes.{i} is a {cfg.architecture}: it needs activations.target_hook (what it predicts)",
                )
            if target is not None and not transcoder:
                raise invalid(
                    self,
                    f"saes.{i}.architecture",
                    f"activations.target_hook is set, so every SAE must be a transcoder, not {cfg.architecture}",
                )
        if target is not None and target == self.activations.hook:
            raise invalid(self, "activations.target_hook", f"target_hook is the input hook {target!r}")

    def _check_crosscoders(self) -> None:
        """Crosscoders read all of `hooks` (every SAE of the job reads the same batches)."""
        hooks = getattr(self.activations, "hooks", None)
        for i, cfg in enumerate(self.saes):
            crosscoder = SAE_ARCHITECTURES.get(cfg.architecture).crosscoder
            if crosscoder and hooks is None:
                raise invalid(
                    self, "activations.hooks", f"saes.{i} is a {cfg.architecture}: it needs activations.hooks (2..8)"
                )
            if hooks is not None and not crosscoder:
                raise invalid(
                    self,
                    f"saes.{i}.architecture",
                    f"activations.hooks is set, so every SAE must be a crosscoder, not {cfg.architecture}",
                )
        if hooks is None:
            return
        if not 2 <= len(hooks) <= 8:
            raise invalid(self, "activations.hooks", f"a crosscoder reads 2..8 hooks, not {len(hooks)}")
        if len(set(hooks)) != len(hooks):
            raise invalid(self, "activations.hooks", f"activations.hooks repeats a hook: {list(hooks)}")
        if getattr(self.activations, "target_hook", None) is not None:
            raise invalid(self, "activations.target_hook", "a crosscoder names its hooks in activations.hooks only")
        if self.activations.hook != hooks[0]:
            raise invalid(
                self, "activations.hook", f"activations.hook {self.activations.hook!r} is not hooks[0] {hooks[0]!r}"
            )

    def _check_gpus(self) -> None:
        # Each trained SAE (one per configuration and seed) goes to a GPU in turn.
        n_trained = len(self.saes) * len(self.seeds or [None])
        if self.parallel == "sweep" and self.gpus > 1 and n_trained < self.gpus:
            raise invalid(
                self,
                "gpus",
                f"gpus={self.gpus} with {n_trained} SAE(s) to train and parallel='sweep' leaves GPUs idle:"
                " use at most one GPU per SAE, or parallel='data'",
            )
        if self.parallel == "data":
            for i, cfg in enumerate(self.saes):
                if cfg.architecture == "batchtopk":  # its top-k is taken over the whole batch
                    raise invalid(
                        self, f"saes.{i}.architecture", "batchtopk picks latents batch-wide: not with parallel='data'"
                    )
