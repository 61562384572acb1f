"""The CUDA paths of big-model harvests: a model loaded whole onto the GPU or spread by accelerate's
device_map in bf16, the forward stopped at the deepest hook, GPU memory reported, bf16 storage,
and out-of-memory (at planning and in a real forward) named by the spec field to change.
Run by bench/gpu/check.sh (`pytest -m gpu`); skipped where there is no CUDA."""

from __future__ import annotations

import pytest
import torch

from saeq.errors import OutOfMemory
from saeq.jobs.harvest import harvest_activations
from saeq.ml import models as saeq_models
from saeq.ml.corpus import Document
from saeq.ml.models import decoder_blocks, load_model
from saeq.ml.placement import Placement, cuda_free_bytes, gpu_memory_figures, plan_placement, reset_gpu_memory_peak
from saeq.specs import HarvestSpec, ModelSpec

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

HOOK = "blocks.1.hook_resid_post"


def docs(n: int = 64) -> list[Document]:
    words = [
        "the",
        "cat",
        "sat",
        "on",
        "a",
        "mat",
        "while",
        "seven",
        "ships",
        "sailed",
        "north",
        "across",
        "grey",
        "water",
    ]
    return [Document(i, " ".join(words[(i + j) % len(words)] for j in range(200))) for i in range(n)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random 4-block Llama and a BPE tokenizer trained on docs(), saved like a hub model (the
    GPU machine has no builtin corpus package: tests.tiny_model's tokenizer reads that corpus)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = tmp_path_factory.mktemp("tiny-llama")
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator([d.text for d in docs()], trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=1,
        eos_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def spec_for(model_dir, **kw) -> HarvestSpec:
    kw = {"hooks": [HOOK], "context_len": 64, "shard_tokens": 1024, "max_tokens": 1024, "batch_size": 8} | kw
    return HarvestSpec(model=ModelSpec(name=str(model_dir)), **kw)


def harvest(spec, lm, **kw):
    return list(harvest_activations(spec, lm, docs(), **kw))


def test_a_model_that_fits_loads_whole_on_the_gpu_and_matches_cpu(model_dir, tmp_path):
    gpu = load_model(ModelSpec(name=str(model_dir)), device="cuda", cache_dir=str(tmp_path))
    cpu = load_model(ModelSpec(name=str(model_dir)), cache_dir=str(tmp_path))
    assert gpu.device.type == "cuda" and gpu.provenance["dtype"] == "float32"
    assert gpu.provenance["weight_bytes"] == 4 * sum(p.numel() for p in gpu.model.parameters())
    assert "device_map" not in gpu.provenance
    spec = spec_for(model_dir, dtype="float32")
    reset_gpu_memory_peak(gpu.model)
    (on_gpu,) = harvest(spec, gpu)
    (on_cpu,) = harvest(spec, cpu)
    torch.testing.assert_close(on_gpu.tensors[HOOK]["acts"], on_cpu.tensors[HOOK]["acts"], atol=1e-3, rtol=1e-3)
    figures = gpu_memory_figures(gpu.model)
    assert figures["gpus"] == 1 and 0 < figures["gpu_max_allocated_gib"] < 1


def test_bf16_storage_on_the_gpu_is_the_fp32_output_rounded(model_dir, tmp_path):
    lm = load_model(ModelSpec(name=str(model_dir)), device="cuda", cache_dir=str(tmp_path))
    (fp32,) = harvest(spec_for(model_dir, dtype="float32"), lm)
    (bf16,) = harvest(spec_for(model_dir), lm)  # the default
    a, b = fp32.tensors[HOOK], bf16.tensors[HOOK]
    assert b["acts"].dtype == torch.bfloat16 and b["acts"].device.type == "cpu"
    assert torch.equal(b["acts"], a["acts"].bfloat16()) and torch.equal(b["norms"], a["norms"])


def test_a_spread_model_loads_in_bf16_by_device_map_and_stops_at_the_deepest_hook(model_dir, tmp_path, monkeypatch):
    free = cuda_free_bytes("cuda")

    def spread(n_params, dtype, device, free_bytes):  # as plan_placement answers for a model too big for one GPU
        return Placement("bfloat16", "auto", {i: f // 2 for i, f in free.items()}, 2 * n_params)

    monkeypatch.setattr(saeq_models, "plan_placement", spread)
    lm = load_model(ModelSpec(name=str(model_dir)), device="cuda", cache_dir=str(tmp_path))
    assert lm.provenance["device_map"] == "auto" and lm.provenance["dtype_requested"] == "float32"
    assert getattr(lm.model, "hf_device_map", None) and lm.device.type == "cuda"
    assert {p.dtype for p in lm.model.parameters()} == {torch.bfloat16}
    later = []
    last = decoder_blocks(lm.model)[-1].block
    handle = last.register_forward_hook(lambda module, args, out: later.append(1))
    try:
        (shard,) = harvest(spec_for(model_dir), lm)
    finally:
        handle.remove()
    assert later == []  # blocks after the deepest hook never ran
    assert shard.tensors[HOOK]["acts"].isfinite().all()


def test_a_model_larger_than_every_gpu_is_out_of_memory_before_loading():
    free = cuda_free_bytes("cuda")
    n_params = sum(free.values())  # x 2 bytes in bf16: twice what is free
    with pytest.raises(OutOfMemory) as e:
        plan_placement(n_params, "float32", "cuda", free)
    assert e.value.field == "spec.model.name"


def test_a_forward_that_runs_out_of_gpu_memory_names_batch_size(model_dir, tmp_path):
    lm = load_model(ModelSpec(name=str(model_dir)), device="cuda", cache_dir=str(tmp_path))
    spec = spec_for(model_dir, context_len=512, shard_tokens=16_384, max_tokens=16_384, batch_size=32)
    hog = []
    try:
        chunk = 1 << 30
        while chunk >= 1 << 20:  # fill the GPU until less than 1 MiB is left
            try:
                hog.append(torch.empty(chunk, dtype=torch.uint8, device="cuda"))
            except torch.OutOfMemoryError:
                chunk //= 2
        with pytest.raises(OutOfMemory) as e:
            harvest(spec, lm, micro_batch_tokens=16_384)
        assert e.value.field == "spec.batch_size" and e.value.code == "out_of_memory"
    finally:
        hog.clear()
        torch.cuda.empty_cache()
