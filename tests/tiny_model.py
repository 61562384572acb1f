"""A tiny randomly initialised Llama and a byte-level BPE tokenizer, saved like a hub model, so
tests can load "a model by path" in a worker process without any download."""

from __future__ import annotations

from pathlib import Path


def save_tiny_llama(path: Path, *, n_layers: int = 3, d_model: int = 64, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from saeq.ml.corpus import builtin_documents

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [d.text for d in builtin_documents("wiki-en")[:300]]
    tok.train_from_iterator(
        texts,
        trainers.BpeTrainer(
            vocab_size=512,
            special_tokens=["<unk>", "<s>", "</s>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=fast.vocab_size if hasattr(fast, "vocab_size") else 512,
        hidden_size=d_model,
        intermediate_size=2 * d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path
