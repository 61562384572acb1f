"""Peak memory of a job from its spec alone: no torch, no download (the API refuses at submit what
no worker pool can hold; saeq.platform.pools).

The estimate is of ONE device, the busiest, in the bytes its tensors hold (what
torch.cuda.max_memory_allocated counts): model weights at the spec's dtype, one micro-batch's
forward activations up to the deepest hook (the residual stream, q/k/v, the MLP's hidden layer and,
on CPU, the attention scores), SAE weights with gradients and Adam's two moments, a training
batch's latents, and the logits of the passes that need them. On CPU (`device="cpu"`) the host
buffers join the device's: a harvest's shard being filled; a training's resident shards, read-ahead
chunks, queued batches and held-out tokens. Model shapes come from a local model's config.json, or from a small table of the offline
models (`_KNOWN_MODELS`, numbers from their published configs); any other model: None.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from saeq.specs import (
    BUILTIN_MODEL,
    EvaluateSpec,
    HarvestSpec,
    ImportedSae,
    LabelSpec,
    ModelSpec,
    OnlineActivations,
    SaeConfig,
    TrainSpec,
)
from saeq.specs.scheduling import MemoryEstimate
from saeq.specs.train_seeds import sae_runs

Device = Literal["cpu", "cuda"]
Resolve = Callable[[str], object]
"""A job id -> that job's spec (a HarvestSpec, a TrainSpec...), or None when it is unknown."""

MICRO_BATCH_TOKENS = 8192
"""saeq.ml.stopping.MICRO_BATCH_TOKENS (not imported: that module is torch's side): the most tokens
one forward pass runs, whatever the batch size."""
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# saeq.ml.activations.HarvestData's defaults, which the worker keeps (tests/saeq/platform/
# test_memory_estimate.py holds the two equal): decoded shards kept resident, read-ahead bounds,
# gathered batches queued for the trainer.
FEED_CACHE_BYTES = 2 << 30
FEED_PREFETCH_BYTES = 512 << 20
FEED_PREFETCH_CHUNKS = 4
FEED_QUEUE_BATCHES = 4


@dataclass(frozen=True)
class ModelShape:
    """What the estimate needs of a decoder-only transformer."""

    params: int
    d_model: int
    n_layers: int
    n_heads: int
    head_dim: int
    n_kv_heads: int
    d_ff: int
    vocab: int


def _shape(d: int, layers: int, heads: int, kv: int, head_dim: int, d_ff: int, vocab: int, tied: bool) -> ModelShape:
    q, kv_dim = heads * head_dim, kv * head_dim
    per_layer = d * q + 2 * d * kv_dim + q * d + 3 * d * d_ff + 2 * d  # attention, gated MLP, norms
    params = vocab * d * (1 if tied else 2) + layers * per_layer + d
    return ModelShape(params, d, layers, heads, head_dim, kv, d_ff, vocab)


# From the models' config.json on the hub (SmolLM2-135M: HuggingFaceTB/SmolLM2-135M; Gemma 3 270M:
# google/gemma-3-270m); both tie the embedding to the LM head. The builtin model is SmolLM2-135M-Instruct.
_SMOLLM2_135M = _shape(576, 30, 9, 3, 64, 1536, 49152, tied=True)
_GEMMA3_270M = _shape(640, 18, 4, 1, 256, 2048, 262144, tied=True)
_KNOWN_MODELS = {
    BUILTIN_MODEL: _SMOLLM2_135M,
    "HuggingFaceTB/SmolLM2-135M": _SMOLLM2_135M,
    "HuggingFaceTB/SmolLM2-135M-Instruct": _SMOLLM2_135M,
    "google/gemma-3-270m": _GEMMA3_270M,
    "google/gemma-3-270m-it": _GEMMA3_270M,
}


def model_shape(spec: ModelSpec) -> ModelShape | None:
    """The model's shape: the table, or a local directory's config.json when this host sees it
    (the API often does not: None then, as for a GGUF or an unknown hub id)."""
    if spec.name in _KNOWN_MODELS:
        return _KNOWN_MODELS[spec.name]
    if spec.source != "path" or spec.gguf_file:
        return None
    try:
        cfg = json.loads((Path(spec.name) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return shape_from_config(cfg.get("text_config", cfg))


def shape_from_config(cfg: dict) -> ModelShape | None:
    """A Llama/Gemma/Qwen-style config.json's shape; None when it lacks a field."""
    try:
        d, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        return _shape(
            d,
            int(cfg["num_hidden_layers"]),
            heads,
            int(cfg.get("num_key_value_heads") or heads),
            int(cfg.get("head_dim") or d // heads),
            int(cfg["intermediate_size"]),
            int(cfg["vocab_size"]),
            tied=bool(cfg.get("tie_word_embeddings", True)),
        )
    except (KeyError, TypeError, ValueError):
        return None


class _Parts:
    """Named terms; a term several fields feed (one per SAE) shrinks most through its biggest."""

    def __init__(self) -> None:
        self.bytes: dict[str, int] = {}
        self.by_field: dict[str, dict[str, int]] = {}

    def add(self, name: str, n_bytes: float, field: str) -> None:
        self.bytes[name] = self.bytes.get(name, 0) + int(n_bytes)
        fields = self.by_field.setdefault(name, {})
        fields[field] = fields.get(field, 0) + int(n_bytes)

    def estimate(self) -> MemoryEstimate:
        biggest = max(self.bytes, key=lambda k: self.bytes[k])
        fields = self.by_field[biggest]
        return MemoryEstimate(
            total_bytes=sum(self.bytes.values()),
            parts=dict(self.bytes),
            shrink_field=max(fields, key=lambda f: fields[f]),
        )


def _add_model(parts: _Parts, model: ModelSpec, shape: ModelShape, field: str) -> None:
    shrink = f"{field}.dtype" if model.dtype == "float32" else f"{field}.name"
    parts.add("model_weights", shape.params * _DTYPE_BYTES[model.dtype], shrink)


def _add_forward(
    parts: _Parts, shape: ModelShape, dtype_bytes: int, contexts: int, context_len: int, device: Device, field: str
) -> int:
    """One micro-batch's live activations inside a block (no grad: one block's at a time, plus the
    residual stream and the captured hooks). Returns the micro-batch's tokens."""
    per_pass = max(1, MICRO_BATCH_TOKENS // context_len)
    micro = min(contexts, per_pass)
    tokens = micro * context_len
    q, kv = shape.n_heads * shape.head_dim, shape.n_kv_heads * shape.head_dim
    # residual in and out, the normed input, q, k, v, attention output; gate, up and their product
    per_token = 4 * shape.d_model + q + 2 * kv + q + 3 * shape.d_ff
    n_bytes = tokens * per_token * dtype_bytes
    if device == "cpu":  # CPU attention materialises the scores (GPU kernels stream them)
        n_bytes += micro * shape.n_heads * context_len * context_len * dtype_bytes
    parts.add("forward_activations", n_bytes, field if contexts > micro else field.rsplit(".", 1)[0] + ".context_len")
    return tokens


def _synthetic_harvest(spec: HarvestSpec) -> MemoryEstimate:
    """No model: the generator's features, one draw of dense codes (saeq.ml.synthetic_truth draws
    2**22 elements at a time; its normals, firing mask, magnitudes and codes) and the shard."""
    g = spec.synthetic
    assert g is not None
    parts = _Parts()
    parts.add("synthetic_features", g.n_features * g.d_model * 4, "spec.synthetic.n_features")
    parts.add("synthetic_draw", 4 * (1 << 22) * 4, "spec.synthetic")  # fixed: no field shrinks it
    n = spec.shard_tokens
    parts.add("shard_buffers", n * (g.d_model * (4 + _DTYPE_BYTES[spec.dtype]) + 4) + 3 * n * 4, "spec.shard_tokens")
    return parts.estimate()


def _harvest(spec: HarvestSpec, device: Device) -> MemoryEstimate | None:
    if spec.source == "synthetic":
        return _synthetic_harvest(spec)
    shape = model_shape(spec.model)
    if shape is None:
        return None
    parts = _Parts()
    _add_model(parts, spec.model, shape, "spec.model")
    _add_forward(
        parts, shape, _DTYPE_BYTES[spec.model.dtype], spec.batch_size, spec.context_len, device, "spec.batch_size"
    )
    if device == "cpu":  # the shard being filled: acts per hook, norms, token/doc ids, positions
        n = spec.shard_tokens // spec.context_len * spec.context_len
        per_hook = n * (shape.d_model * _DTYPE_BYTES[spec.dtype] + 4)
        parts.add("shard_buffers", per_hook * len(spec.hooks) + 3 * n * 4, "spec.shard_tokens")
    return parts.estimate()


def _sae_width(cfg: SaeConfig, d_in: int) -> int:
    return cfg.d_sae if cfg.d_sae is not None else cfg.expansion_factor * d_in


def _width_field(i: int, cfg: SaeConfig) -> str:
    return f"spec.saes.{i}.d_sae" if cfg.d_sae is not None else f"spec.saes.{i}.expansion_factor"


def _train(spec: TrainSpec, device: Device, resolve: Resolve | None) -> MemoryEstimate | None:
    source, synthetic_width = spec.activations, None
    if isinstance(source, OnlineActivations):
        model, stored_bytes, harvest_tokens = source.model, 4, 0
    else:
        harvest = resolve(source.job_id) if resolve is not None else None
        if not isinstance(harvest, HarvestSpec):
            return None
        model, stored_bytes, harvest_tokens = harvest.model, _DTYPE_BYTES[harvest.dtype], harvest.max_tokens
        synthetic_width = harvest.synthetic.d_model if harvest.synthetic is not None else None
    # a synthetic harvest ran no model: its generator's width is the SAEs' d_in
    shape = model_shape(model) if synthetic_width is None else ModelShape(0, synthetic_width, 0, 0, 0, 0, 0, 0)
    if shape is None:
        return None
    d_in, parts = shape.d_model, _Parts()
    if isinstance(source, OnlineActivations):
        _add_model(parts, model, shape, "spec.activations.model")
        batch = source.batch_size
        _add_forward(
            parts, shape, _DTYPE_BYTES[model.dtype], batch, source.context_len, device, "spec.activations.batch_size"
        )
    # The busiest device: sweep puts SAE i on GPU i % gpus; data-parallel splits every batch.
    runs = sae_runs(spec)  # with seeds, every configuration once per seed
    on_first = [j for j in range(len(runs)) if spec.parallel == "data" or j % spec.gpus == 0]
    batch_tokens = spec.batch_size // spec.gpus if spec.parallel == "data" else spec.batch_size
    for j in on_first:
        cfg, i = runs[j].config, runs[j].index
        d_sae, field = _sae_width(cfg, d_in), _width_field(i, cfg)
        weights = (2 * d_in * d_sae + d_sae + d_in) * 4
        parts.add("sae_weights", weights, field)
        parts.add("sae_grads", weights, field)
        parts.add("sae_adam_state", 2 * weights, field)
        parts.add("sae_dead_counters", d_sae * (8 + 4), field)  # tokens since fired (int64), fire rate
        # pre-activations, latents and their gradients (B, d_sae); input, output, error (B, d_in)
        parts.add("sae_batch_activations", batch_tokens * (3 * d_sae + 3 * d_in) * 4, "spec.batch_size")
    if device == "cpu" and not isinstance(source, OnlineActivations):
        _add_feed(parts, spec, harvest_tokens, d_in, stored_bytes)
    return parts.estimate()


def _add_feed(parts: _Parts, spec: TrainSpec, harvest_tokens: int, d_in: int, stored_bytes: int) -> None:
    """The feed's host memory (saeq.ml.activations.HarvestData): decoded shards stay resident up to
    its cache (all that was read, for a harvest that fits), the chunks read ahead of the trainer
    join them, gathered batches wait in its queue, and the held-out tokens are float32."""
    row_bytes = d_in * stored_bytes
    chunk_bytes = spec.shuffle_tokens * row_bytes
    ahead = min(FEED_PREFETCH_CHUNKS, max(1, FEED_PREFETCH_BYTES // max(1, chunk_bytes)))
    # what the training reads: its tokens plus the chunk it is in and those loading ahead, at most
    # the whole harvest (later epochs re-read what is already resident)
    read_tokens = min(harvest_tokens, spec.total_tokens + (ahead + 1) * spec.shuffle_tokens)
    resident = min(read_tokens * row_bytes, FEED_CACHE_BYTES + (ahead + 1) * chunk_bytes)
    parts.add(
        "resident_shards", resident, "spec.shuffle_tokens" if resident > FEED_CACHE_BYTES else "spec.total_tokens"
    )
    parts.add("queued_batches", FEED_QUEUE_BATCHES * spec.batch_size * d_in * 4, "spec.batch_size")
    parts.add("validation_tokens", spec.validation_tokens * d_in * 4, "spec.validation_tokens")


def _reader(spec: LabelSpec | EvaluateSpec, resolve: Resolve | None) -> tuple[ModelSpec, int, int, ModelShape] | None:
    """The model, context length, SAE width and model shape a label or evaluate job reads."""
    if isinstance(spec.sae, ImportedSae) or resolve is None:
        return None  # an imported SAE's width is in its cfg.json on the worker
    train = resolve(spec.sae.job_id)
    if not isinstance(train, TrainSpec) or isinstance(train.activations, OnlineActivations):
        return None
    harvest = resolve(train.activations.job_id)
    if not isinstance(harvest, HarvestSpec):
        return None
    model = spec.model or harvest.model
    shape = model_shape(model)
    if shape is None:
        return None
    runs = sae_runs(train)
    cfg = next((r.config for r in runs if r.name == spec.sae.name), runs[0].config)
    return model, spec.context_len or harvest.context_len, _sae_width(cfg, shape.d_model), shape


def _read_sae(
    spec: LabelSpec | EvaluateSpec, device: Device, resolve: Resolve | None, logits: int
) -> MemoryEstimate | None:
    found = _reader(spec, resolve)
    if found is None:
        return None
    model, context_len, d_sae, shape = found
    parts = _Parts()
    _add_model(parts, model, shape, "spec.model")
    tokens = _add_forward(
        parts, shape, _DTYPE_BYTES[model.dtype], spec.batch_size, context_len, device, "spec.batch_size"
    )
    parts.add("sae_weights", (2 * shape.d_model * d_sae + d_sae + shape.d_model) * 4, "spec.sae")
    parts.add("sae_latents", tokens * d_sae * 4, "spec.batch_size")
    if logits:  # float32 logits and their log-softmax, per pass kept for the comparison
        parts.add("logits", logits * 2 * tokens * shape.vocab * 4, "spec.batch_size")
    if isinstance(spec, LabelSpec):
        features = spec.max_features or d_sae
        field = "spec.select.per_bin" if spec.select is not None else "spec.n_most_active"
        examples = spec.n_explain_examples + 2 * spec.n_score_examples
        # top examples per feature: value, context id and position (int64) each
        parts.add("feature_example_buffers", features * examples * (4 + 8 + 8) + d_sae * 8, field)
    else:
        parts.add("feature_counters", d_sae * (8 + 4) * 2, "spec.sae")
    return parts.estimate()


def estimate_peak(spec: object, *, device: Device = "cuda", resolve: Resolve | None = None) -> MemoryEstimate | None:
    """The peak memory of `spec` on one device of kind `device`; None for a kind or a model it
    cannot estimate (a steer job, a GGUF or unknown hub model, an SAE whose width is on the worker).
    `resolve` looks up the specs of the jobs this one reads (a train's harvest, a label job's
    training and harvest); without it those kinds are None."""
    if isinstance(spec, HarvestSpec):
        return _harvest(spec, device)
    if isinstance(spec, TrainSpec):
        return _train(spec, device, resolve)
    if isinstance(spec, LabelSpec):
        return _read_sae(spec, device, resolve, logits=0)
    if isinstance(spec, EvaluateSpec):
        # clean, spliced and zero-ablated passes are compared token by token
        return _read_sae(spec, device, resolve, logits=3)
    return None


__all__ = ["ModelShape", "estimate_peak", "model_shape", "shape_from_config"]
