"""Big models: where the weights go is decided from the config before loading; a model that fits
nowhere, or an allocation that fails while loading or running it, is OutOfMemory naming the spec
field to change. CPU only (the CUDA path itself: tests/gpu/test_cuda.py)."""

from __future__ import annotations

import pytest
import torch

from saeq.errors import OutOfMemory
from saeq.jobs.harvest import harvest_activations
from saeq.ml.corpus import iter_documents
from saeq.ml.models import decoder_blocks, load_model
from saeq.ml.placement import (
    GIB,
    HEADROOM,
    gpu_memory_figures,
    is_out_of_memory,
    parameter_count,
    plan_placement,
)
from saeq.specs import BuiltinCorpus, HarvestSpec, ModelSpec
from tests.saeq.conftest import build_tiny

N_8B = 8_000_000_000  # an 8B model: 32 GB in float32, 16 GB in bfloat16


def cpu_allocation_failure() -> RuntimeError:
    """The error torch's CPU allocator really raises when host memory runs out."""
    try:
        torch.empty(1 << 50, dtype=torch.uint8)  # 1 PiB
    except RuntimeError as e:
        return e
    raise AssertionError("a 1 PiB allocation succeeded")


def test_off_cuda_the_spec_dtype_loads_whole_whatever_the_size():
    for device in ("cpu", "mps"):
        p = plan_placement(N_8B, "float32", device, {})
        assert (p.dtype, p.device_map, p.max_memory) == ("float32", None, None)


def test_a_model_that_fits_its_gpu_loads_there_unchanged():
    p = plan_placement(N_8B, "float32", "cuda:1", {0: 0, 1: 80 * GIB})
    assert (p.dtype, p.device_map, p.weight_bytes) == ("float32", None, 4 * N_8B)
    # The headroom counts: weights that fill the GPU exactly do not fit.
    p = plan_placement(N_8B, "float32", "cuda", {0: 4 * N_8B, 1: 200 * GIB})
    assert (p.dtype, p.device_map) == ("bfloat16", "auto")


def test_a_model_larger_than_its_gpu_spreads_in_bf16_over_the_gpus():
    free = {0: 12 * GIB, 1: 12 * GIB}  # 16 GB of bf16 weights fit in neither, in both together
    p = plan_placement(N_8B, "float32", "cuda", free)
    assert (p.dtype, p.device_map, p.weight_bytes) == ("bfloat16", "auto", 2 * N_8B)
    assert p.max_memory == {0: int(12 * GIB / HEADROOM), 1: int(12 * GIB / HEADROOM)}
    assert p.provenance("float32") == {
        "dtype": "bfloat16",
        "weight_bytes": 2 * N_8B,
        "device_map": "auto",
        "n_gpus": 2,
        "dtype_requested": "float32",
    }
    assert plan_placement(N_8B, "float16", "cuda", free).dtype == "float16"  # already half: kept


def test_a_model_that_fits_nowhere_is_out_of_memory_before_loading():
    with pytest.raises(OutOfMemory) as e:
        plan_placement(70_000_000_000, "bfloat16", "cuda", {0: 40 * GIB, 1: 40 * GIB})
    assert e.value.code == "out_of_memory" and e.value.field == "spec.model.name"
    assert "70.00B parameters" in e.value.message and "80.0 GiB free" in e.value.message


@pytest.mark.parametrize("tied", [True, False])
def test_parameter_count_from_the_config_alone(tied):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        tie_word_embeddings=tied,
    )
    built = LlamaForCausalLM(config)
    assert parameter_count(config) == sum(p.numel() for p in built.parameters())


def test_allocation_failures_are_told_apart_from_other_errors():
    assert is_out_of_memory(cpu_allocation_failure())
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


@pytest.mark.parametrize("dtype, field", [("float32", "spec.model.dtype"), ("bfloat16", "spec.model.name")])
def test_running_out_of_memory_while_loading_names_the_field_to_change(
    tmp_path, tiny_tokenizer, monkeypatch, dtype, field
):
    build_tiny("llama", n_layers=2).save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    failure = cpu_allocation_failure()

    def from_pretrained(*args, **kwargs):
        raise failure

    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", from_pretrained)
    with pytest.raises(OutOfMemory) as e:
        load_model(ModelSpec(name=str(tmp_path), dtype=dtype), cache_dir=str(tmp_path / "cache"))
    assert e.value.field == field and "out of host memory" in e.value.message


def test_a_model_off_cuda_reports_no_gpu_memory(tiny_llama):
    assert gpu_memory_figures(tiny_llama.model) == {}


def _harvest_spec() -> HarvestSpec:
    return HarvestSpec(
        model=ModelSpec(name="/tiny"),
        hooks=["blocks.1.hook_resid_post"],
        context_len=16,
        shard_tokens=128,
        max_tokens=128,
        corpus=BuiltinCorpus(max_docs=20),
    )


@pytest.mark.parametrize(
    "error, expected",
    [
        (torch.OutOfMemoryError("CUDA out of memory"), OutOfMemory),
        (cpu_allocation_failure(), OutOfMemory),
        (RuntimeError("shape mismatch"), RuntimeError),
    ],
)
def test_a_forward_that_runs_out_of_memory_names_batch_size(tiny_llama, error, expected):
    spec = _harvest_spec()

    def fail(module, args):
        raise error

    handle = decoder_blocks(tiny_llama.model)[0].block.register_forward_pre_hook(fail)
    try:
        with pytest.raises(expected) as e:
            list(harvest_activations(spec, tiny_llama, iter_documents(spec.corpus, seed=0)))
    finally:
        handle.remove()
    if expected is OutOfMemory:
        assert e.value.field == "spec.batch_size" and e.value.code == "out_of_memory"
    else:
        assert e.value is error
