"""The peak-memory estimate from a spec alone: model sizes agree with the real models' parameter
counts, every term is named and summed, the field to shrink is the biggest term's, multi-GPU jobs
are estimated per device, and what cannot be estimated says so (None)."""

from __future__ import annotations

import json

import pytest

from saeq.platform.memory_estimate import _SMOLLM2_135M, estimate_peak, model_shape, shape_from_config
from saeq.specs import (
    ActivationsRef,
    BuiltinCorpus,
    EvaluateSpec,
    HarvestSpec,
    ImportedSae,
    LabelSpec,
    ModelSpec,
    SaeConfig,
    SteerSpec,
    TrainedSae,
    TrainSpec,
)

HOOK = "blocks.14.hook_resid_post"
H_ID, T_ID = "1" * 32, "2" * 32

# HuggingFaceTB/SmolLM2-135M's config.json (the fields the estimate reads); 134,515,008 parameters.
SMOLLM2_CONFIG = {
    "hidden_size": 576,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "num_hidden_layers": 30,
    "intermediate_size": 1536,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
}


def test_smollm2s_size_is_its_published_parameter_count():
    shape = shape_from_config(SMOLLM2_CONFIG)
    assert shape is not None and shape.params == 134_515_008 == _SMOLLM2_135M.params
    assert model_shape(ModelSpec()) == _SMOLLM2_135M


def test_a_local_models_size_comes_from_its_config_json(tmp_path):
    import torch  # the test only: the estimate itself reads config.json

    from tests.tiny_model import save_tiny_llama

    model_dir = save_tiny_llama(tmp_path / "tiny", n_layers=3, d_model=64)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    n_params = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    shape = model_shape(ModelSpec(name=str(model_dir)))
    assert shape is not None and shape.params == n_params and shape.d_model == 64


def test_unknown_models_and_kinds_are_not_estimated(tmp_path):
    assert model_shape(ModelSpec(name="someone/unknown-model")) is None
    assert model_shape(ModelSpec(name=str(tmp_path))) is None  # no config.json
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 8}))
    assert model_shape(ModelSpec(name=str(tmp_path))) is None  # fields missing
    assert estimate_peak(HarvestSpec(model=ModelSpec(name="someone/unknown-model"))) is None
    assert estimate_peak(SteerSpec.model_construct()) is None  # steer: not estimated


def test_a_harvests_terms_and_what_to_shrink():
    spec = HarvestSpec(hooks=[HOOK])
    est = estimate_peak(spec, device="cuda")
    assert est is not None and est.total_bytes == sum(est.parts.values())
    assert est.parts["model_weights"] == 134_515_008 * 4
    assert "shard_buffers" not in est.parts  # host memory, not the GPU's
    assert est.shrink_field == "spec.model.dtype"  # the weights are the biggest term
    half = estimate_peak(HarvestSpec(hooks=[HOOK], model=ModelSpec(dtype="bfloat16")), device="cuda")
    assert half is not None and half.parts["model_weights"] * 2 == est.parts["model_weights"]
    assert half.shrink_field == "spec.model.name"  # bf16 already: a smaller model
    cpu = estimate_peak(spec, device="cpu")
    assert cpu is not None and cpu.parts["shard_buffers"] > 0 and cpu.total_bytes > est.total_bytes
    # the forward pass grows with the batch only up to one micro-batch of 8,192 tokens
    big = estimate_peak(HarvestSpec(hooks=[HOOK], batch_size=64), device="cuda")
    huge = estimate_peak(HarvestSpec(hooks=[HOOK], batch_size=4096), device="cuda")
    assert big is not None and huge is not None
    assert big.parts["forward_activations"] == huge.parts["forward_activations"] > est.parts["forward_activations"]
    long = estimate_peak(HarvestSpec(hooks=[HOOK], context_len=8192, model=ModelSpec(dtype="bfloat16")))
    assert long is not None and long.shrink_field == "spec.model.name"


def _resolver(*specs: tuple[str, object]):
    return dict(specs).get


def _train(**fields) -> TrainSpec:
    fields.setdefault("total_tokens", 1 << 20)
    return TrainSpec(activations=ActivationsRef(job_id=H_ID, hook=HOOK), **fields)


def test_a_trainings_sae_terms_and_its_harvest():
    resolve = _resolver((H_ID, HarvestSpec(hooks=[HOOK])))
    assert estimate_peak(_train()) is None  # its harvest unknown: its d_in is
    est = estimate_peak(_train(saes=[SaeConfig(d_sae=1 << 18)], batch_size=256), resolve=resolve)
    assert est is not None
    weights = (2 * 576 * (1 << 18) + (1 << 18) + 576) * 4
    assert est.parts["sae_weights"] == est.parts["sae_grads"] == weights and est.parts["sae_adam_state"] == 2 * weights
    assert est.shrink_field == "spec.saes.0.d_sae"
    wide = estimate_peak(_train(saes=[SaeConfig(), SaeConfig(expansion_factor=64)], batch_size=256), resolve=resolve)
    assert wide is not None and wide.shrink_field == "spec.saes.1.expansion_factor"
    batch = estimate_peak(_train(batch_size=1 << 17), resolve=resolve)
    assert batch is not None and batch.shrink_field == "spec.batch_size"


def test_multi_gpu_trainings_are_estimated_per_device():
    resolve = _resolver((H_ID, HarvestSpec(hooks=[HOOK])))
    saes = [SaeConfig(name="a"), SaeConfig(name="b")]
    one = estimate_peak(_train(saes=saes), resolve=resolve)
    sweep = estimate_peak(_train(saes=saes, gpus=2), resolve=resolve)
    data = estimate_peak(_train(saes=saes, gpus=2, parallel="data"), resolve=resolve)
    assert one is not None and sweep is not None and data is not None
    assert sweep.parts["sae_weights"] * 2 == one.parts["sae_weights"]  # one SAE per GPU
    assert data.parts["sae_weights"] == one.parts["sae_weights"]  # every SAE on every GPU...
    assert data.parts["sae_batch_activations"] * 2 == one.parts["sae_batch_activations"]  # ...half a batch


def test_label_and_evaluate_read_their_training_and_harvest():
    resolve = _resolver((H_ID, HarvestSpec(hooks=[HOOK])), (T_ID, _train(saes=[SaeConfig(name="x", d_sae=8192)])))
    label = estimate_peak(LabelSpec(sae=TrainedSae(job_id=T_ID)), resolve=resolve)
    evaluate = estimate_peak(EvaluateSpec(sae=TrainedSae(job_id=T_ID, name="x"), checks=None), resolve=resolve)
    assert label is not None and evaluate is not None
    assert label.parts["sae_weights"] == evaluate.parts["sae_weights"] == (2 * 576 * 8192 + 8192 + 576) * 4
    assert "feature_example_buffers" in label.parts and "logits" in evaluate.parts
    assert evaluate.total_bytes > label.total_bytes  # three passes' logits over 49,152 tokens
    assert estimate_peak(LabelSpec(sae=TrainedSae(job_id=T_ID))) is None
    imported = LabelSpec(
        sae=ImportedSae(source="path", path="/models/sae"), model=ModelSpec(), hook=HOOK, corpus=BuiltinCorpus()
    )
    assert estimate_peak(imported, resolve=resolve) is None  # its width is in a file on the worker


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_the_parts_always_sum_to_the_total(device):
    resolve = _resolver((H_ID, HarvestSpec(hooks=[HOOK, "blocks.3.hook_mlp_out"])))
    for spec in (HarvestSpec(hooks=[HOOK, "blocks.3.hook_mlp_out"]), _train()):
        est = estimate_peak(spec, device=device, resolve=resolve)
        assert est is not None and est.total_bytes == sum(est.parts.values()) > 0


def test_the_feed_terms_follow_harvest_datas_own_defaults():
    # The estimate mirrors HarvestData's buffer bounds (it cannot import torch's side): a changed
    # default there must change here, or CPU estimates drift from the measured peak.
    import inspect

    from saeq.ml.activations import HarvestData
    from saeq.platform import memory_estimate as me

    defaults = {k: p.default for k, p in inspect.signature(HarvestData.__init__).parameters.items()}
    assert defaults["cache_bytes"] == me.FEED_CACHE_BYTES
    assert defaults["prefetch_bytes"] == me.FEED_PREFETCH_BYTES
    assert defaults["prefetch_chunks"] == me.FEED_PREFETCH_CHUNKS
    assert defaults["queue_batches"] == me.FEED_QUEUE_BATCHES


def test_a_cpu_training_holds_what_it_reads_of_its_harvest_resident():
    small = _resolver((H_ID, HarvestSpec(hooks=[HOOK], max_tokens=262_144)))
    est = estimate_peak(_train(total_tokens=81_920), device="cpu", resolve=small)
    assert est is not None
    # 81,920 tokens + the chunk in use + 4 read ahead (65,536 each) exceed the harvest: all of it,
    # bf16 rows of 576
    assert est.parts["resident_shards"] == 262_144 * 576 * 2
    assert est.parts["queued_batches"] == 4 * 4096 * 576 * 4
    big = _resolver((H_ID, HarvestSpec(hooks=[HOOK], max_tokens=1 << 30)))
    huge = estimate_peak(_train(total_tokens=1 << 30), device="cpu", resolve=big)
    assert huge is not None  # bounded by the feed's cache plus what is loading, not the harvest
    assert huge.parts["resident_shards"] == (2 << 30) + 5 * 65_536 * 576 * 2
    on_gpu = estimate_peak(_train(total_tokens=81_920), device="cuda", resolve=small)
    assert on_gpu is not None and "resident_shards" not in on_gpu.parts  # host memory, not the device's
