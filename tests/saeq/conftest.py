"""Tiny models and tokenizers for the ML tests: built in memory, nothing downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from saeq.ml.corpus import builtin_documents
from saeq.ml.models import LoadedModel, decoder_blocks


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from threads, and two busy processes sharing this machine's
    cores make OpenMP's spinning threads crawl: run a test on one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """Byte-level BPE (512 tokens) trained on 200 builtin articles, with a BOS token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        [d.text for d in builtin_documents("wiki-en")[:200]],
        trainers.BpeTrainer(
            vocab_size=512,
            special_tokens=["<unk>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def build_tiny(arch: str, *, n_layers: int = 3, d_model: int = 32, vocab: int = 512, seed: int = 0):
    """A randomly initialised causal LM of the given architecture, eval mode, fp32."""
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPTNeoXConfig,
        GPTNeoXForCausalLM,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(seed)
    if arch == "llama":
        model = LlamaForCausalLM(
            LlamaConfig(
                vocab_size=vocab,
                hidden_size=d_model,
                intermediate_size=2 * d_model,
                num_hidden_layers=n_layers,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=256,
                bos_token_id=1,
                eos_token_id=2,
                pad_token_id=2,
            )
        )
    elif arch == "gpt2":
        model = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=vocab,
                n_embd=d_model,
                n_layer=n_layers,
                n_head=4,
                n_positions=256,
                bos_token_id=1,
                eos_token_id=2,
            )
        )
    elif arch == "gpt_neox":
        model = GPTNeoXForCausalLM(
            GPTNeoXConfig(
                vocab_size=vocab,
                hidden_size=d_model,
                intermediate_size=2 * d_model,
                num_hidden_layers=n_layers,
                num_attention_heads=4,
                max_position_embeddings=256,
                bos_token_id=1,
                eos_token_id=2,
            )
        )
    else:
        raise ValueError(arch)
    return model.eval().requires_grad_(False)


def tiny_lm(tokenizer, arch: str = "llama", **kw) -> LoadedModel:
    model = build_tiny(arch, **kw)
    return LoadedModel(
        model,
        tokenizer,
        d_model=model.config.hidden_size,
        n_layers=len(decoder_blocks(model)),
        provenance={"name": f"tiny-{arch}", "dtype": "float32"},
    )


@pytest.fixture(scope="session")
def tiny_llama(tiny_tokenizer) -> LoadedModel:
    return tiny_lm(tiny_tokenizer, "llama")


@pytest.fixture(scope="session")
def smollm2_cache_dir() -> str:
    """Where the builtin model's converted copy lives across sessions (converting takes ~25 s)."""
    path = Path(os.environ.get("SAEQ_TEST_CACHE_DIR", Path.home() / ".cache" / "saeq"))
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


# Moved to saeq.dev.synthetic so benches run from a fresh clone; re-exported for the tests.
from saeq.dev.synthetic import fake_harvest, planted_dictionary  # noqa: E402, F401
