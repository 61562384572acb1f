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


def fake_harvest(
    store,
    job_id: str,
    acts_ND: torch.Tensor,
    *,
    context_len: int = 16,
    shard_tokens: int = 64,
    hook: str = "blocks.1.hook_resid_post",
    norm_factor: float = 5.0,
) -> dict:
    """Write activations as a harvest would (shards under the job's keys) and return a manifest
    with the fields saeq.ml.activations reads, laid out like the worker's."""
    from saeq import keys
    from saeq.ml.shards import write_shard_bytes
    from saeq.ml.sinks import median_norm, sink_stats

    N, D = acts_ND.shape
    positions = torch.arange(context_len, dtype=torch.int32).repeat(N // context_len)
    norms = acts_ND.float().norm(dim=1)
    shards, median = [], None
    for index, start in enumerate(range(0, N, shard_tokens)):
        sl = slice(start, min(start + shard_tokens, N))
        n = sl.stop - sl.start
        if median is None:
            median = median_norm(positions[sl], norms[sl])
        s = sink_stats(positions[sl], norms[sl], median, norm_factor)
        tensors = {
            "acts": acts_ND[sl].contiguous(),
            "token_ids": torch.zeros(n, dtype=torch.int32),
            "doc_ids": torch.zeros(n, dtype=torch.int32),
            "positions": positions[sl],
            "norms": norms[sl],
        }
        key = keys.harvest_shard(job_id, hook, index)
        store.put(key, write_shard_bytes(tensors, {"hook": hook, "n_tokens": n}))
        shards.append({"index": index, "n_tokens": n, "key": key, "n_sinks": s.n_sinks})
    return {
        "format": "saeq.harvest/1",
        "kind": "harvest",
        "job_id": job_id,
        "d_model": D,
        "context_len": context_len,
        "n_tokens": N,
        "hooks": {
            hook: {
                "d_model": D,
                "n_tokens": N,
                "shards": shards,
                "sinks": {"median_norm": median, "norm_factor": norm_factor},
            }
        },
    }


def planted_dictionary(
    n_features: int = 64, d: int = 32, n_active: int = 3, n: int = 60_000, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens x = codes @ F with F (n_features, d) random unit features and sparse non-negative
    codes (n_active features per token, magnitudes in [0.5, 2.5]). -> (x (n, d), F)."""
    g = torch.Generator().manual_seed(seed)
    F = torch.randn(n_features, d, generator=g)
    F /= F.norm(dim=1, keepdim=True)
    idx = torch.rand(n, n_features, generator=g).topk(n_active, dim=1).indices
    mags = torch.rand(n, n_active, generator=g) * 2 + 0.5
    codes = torch.zeros(n, n_features).scatter_(1, idx, mags)
    return codes @ F, F
