"""Models load from a path or the builtin copy; missing ones are NotFound; blocks are found."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from saeq.errors import NotFound
from saeq.ml.models import builtin_gguf_path, builtin_model_dir, decoder_blocks, load_model
from saeq.specs import ModelSpec
from tests.saeq.conftest import build_tiny


@pytest.mark.parametrize(
    "arch, attn, mlp",
    [
        ("llama", "LlamaAttention", "LlamaMLP"),
        ("gpt2", "GPT2Attention", "GPT2MLP"),
        ("gpt_neox", "GPTNeoXAttention", "GPTNeoXMLP"),
    ],
)
def test_decoder_blocks_of_common_architectures(arch, attn, mlp):
    blocks = decoder_blocks(build_tiny(arch, n_layers=2))
    assert len(blocks) == 2
    assert type(blocks[1].attn).__name__ == attn and type(blocks[1].mlp).__name__ == mlp


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="unsupported architecture Sequential.*model.layers"):
        decoder_blocks(nn.Sequential(nn.Linear(2, 2)))


def test_load_model_from_a_local_path(tmp_path, tiny_tokenizer):
    model = build_tiny("llama", n_layers=2)
    model.save_pretrained(tmp_path)
    tiny_tokenizer.save_pretrained(tmp_path)
    lm = load_model(ModelSpec(name=str(tmp_path)), cache_dir=str(tmp_path / "cache"))
    assert (lm.d_model, lm.n_layers) == (32, 2)
    assert not lm.model.training and not any(p.requires_grad for p in lm.model.parameters())
    assert lm.provenance["name"] == str(tmp_path) and lm.provenance["dtype"] == "float32"
    ids = torch.tensor([[5, 6, 7]])
    torch.testing.assert_close(lm.model(ids).logits, model(ids).logits)
    assert lm.tokenizer("a b")["input_ids"] == tiny_tokenizer("a b")["input_ids"]


def test_missing_models_are_not_found(tmp_path):
    with pytest.raises(NotFound) as e:
        load_model(ModelSpec(name=str(tmp_path / "nope")), cache_dir=str(tmp_path))
    assert e.value.field == "spec.model.name" and "no config.json" in e.value.message
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFound, match="no weights.gguf"):
        load_model(ModelSpec(name=str(tmp_path / "empty"), gguf_file="weights.gguf"), cache_dir=str(tmp_path))


def test_unreachable_hub_is_not_found(tmp_path, monkeypatch):
    import huggingface_hub.constants

    # Offline mode: the same answer an unreachable hub gives, without touching the network.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(NotFound) as e:
        load_model(ModelSpec(name="saeq-tests/no-such-model"), cache_dir=str(tmp_path))
    assert e.value.field == "spec.model.name" and "unreachable" in e.value.message


@pytest.mark.smollm2
def test_builtin_copy_gives_the_gguf_logits(smollm2_cache_dir):
    from transformers import AutoModelForCausalLM

    lm = load_model(ModelSpec(), cache_dir=smollm2_cache_dir)
    assert (lm.d_model, lm.n_layers) == (576, 30)
    assert lm.provenance["commit"].startswith("sha256:")
    assert builtin_model_dir(smollm2_cache_dir).parent.name == "models"
    gguf = builtin_gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = lm.tokenizer(
        ["Hydrogen is the lightest element.\n\nParis is"], add_special_tokens=False, return_tensors="pt"
    ).input_ids
    with torch.inference_mode():
        assert torch.equal(lm.model(ids).logits, reference(ids).logits)


def test_builtin_conversion_runs_once_and_survives_a_race(tmp_path, monkeypatch):
    import saeq.ml.models

    conversions = []

    def fake_convert(gguf, out_dir):
        conversions.append(out_dir)
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(saeq.ml.models, "_convert_gguf", fake_convert)
    first = builtin_model_dir(tmp_path / "a")
    assert builtin_model_dir(tmp_path / "a") == first and len(conversions) == 1
    assert sorted(p.name for p in first.iterdir()) == ["config.json", "saeq-provenance.json"]

    winner = tmp_path / "b" / "models" / first.name

    def racing_convert(gguf, out_dir):
        shutil.copytree(first, winner)  # another worker publishes its copy first
        (out_dir / "config.json").write_text("{}")

    monkeypatch.setattr(saeq.ml.models, "_convert_gguf", racing_convert)
    assert builtin_model_dir(tmp_path / "b") == winner
    assert [p.name for p in winner.parent.iterdir()] == [first.name]  # the loser's copy is gone


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_hookpoints_read_what_hidden_states_say_and_edit_changes_the_output(arch):
    from saeq.ml import hookpoints

    model = build_tiny(arch, n_layers=3)
    ids = torch.randint(0, 512, (2, 7))
    with torch.no_grad():
        plain = model(ids, output_hidden_states=True)
        seen: dict[str, torch.Tensor] = {}
        with (
            hookpoints.read(model, "blocks.1.hook_resid_pre", lambda x: seen.setdefault("pre", x.clone())),
            hookpoints.read(model, "blocks.1.hook_resid_post", lambda x: seen.setdefault("post", x.clone())),
        ):
            again = model(ids)
        # resid_pre of block i is hidden_states[i], resid_post hidden_states[i + 1]; reading changes nothing.
        torch.testing.assert_close(seen["pre"], plain.hidden_states[1])
        torch.testing.assert_close(seen["post"], plain.hidden_states[2])
        torch.testing.assert_close(again.logits, plain.logits)
        with hookpoints.edit(model, "blocks.1.hook_mlp_out", torch.zeros_like):
            edited = model(ids).logits
        assert not torch.allclose(edited, plain.logits)
        torch.testing.assert_close(model(ids).logits, plain.logits)  # the edit is gone on exit
        with (
            pytest.raises(ValueError, match="the model has 3 blocks"),
            hookpoints.read(model, "blocks.3.hook_resid_post", print),
        ):
            pass
