"""Document activations: the same numbers as running the SAE on each article alone, the separator
(position 0) left out, padding changing nothing."""

from __future__ import annotations

import torch

from saeq.checks.documents import document_activations, tokenize_documents
from saeq.ml.features import read_hook
from saeq.ml.sae import SparseAutoencoder

HOOK = "blocks.1.hook_resid_post"


def test_batched_documents_match_each_read_alone(tiny_llama, one_thread):
    torch.manual_seed(0)
    sae = SparseAutoencoder(32, 64, "topk", k=4)
    texts = ["Hydrogen is the lightest element.", "Paris is the capital of France and its largest city.", "Rain."]
    ids = tokenize_documents(texts, tiny_llama.tokenizer, context_len=12)
    sep = tiny_llama.tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    assert all(row[: len(sep)] == sep and len(row) <= 12 for row in ids)
    got = document_activations(sae, tiny_llama, HOOK, ids, sinks=None, batch_size=2)
    for i, row in enumerate(ids):
        with torch.inference_mode():
            x_TD = read_hook(tiny_llama, HOOK, torch.tensor([row]))
            acts_TS = sae.encode(x_TD)[1:]  # position 0 (the separator) is a sink
        assert torch.allclose(got.max_DS[i], acts_TS.amax(0), atol=1e-5)
        assert torch.allclose(got.mean_DS[i], acts_TS.mean(0), atol=1e-5)
        assert torch.allclose(got.raw_mean_DM[i], x_TD[1:].mean(0), atol=1e-5)
        assert got.n_ordinary_D[i] == len(row) - 1
