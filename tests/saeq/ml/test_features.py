"""The feature index: one pass gives the same activations as running the SAE directly, and the
windows it serves are the ones a user asks for."""

from __future__ import annotations

import torch

from saeq.ml.features import FeatureIndex, build_feature_index, read_hook
from saeq.ml.sae import SparseAutoencoder
from saeq.ml.sinks import SinkReference

HOOK = "blocks.1.hook_resid_post"


def _batches(ids_CT, docs_CT, batch=4):
    for i in range(0, ids_CT.shape[0], batch):
        yield ids_CT[i : i + batch], docs_CT[i : i + batch]


def test_index_matches_a_direct_forward_and_leaves_out_sinks(tiny_llama):
    torch.manual_seed(0)
    sae = SparseAutoencoder(32, 96, "topk", k=4)
    ids_CT = torch.randint(3, 512, (10, 16))
    docs_CT = torch.arange(10).repeat_interleave(16).view(10, 16)
    x_ND = read_hook(tiny_llama, HOOK, ids_CT)
    median = float(x_ND.view(10, 16, -1)[:, 1:].norm(dim=-1).median())
    index = build_feature_index(sae, tiny_llama, HOOK, _batches(ids_CT, docs_CT), sinks=SinkReference(median, 5.0))

    with torch.no_grad():
        acts_CTS = sae.encode(x_ND).view(10, 16, 96)
    assert index.sinks_CT[:, 0].all()  # position 0 is always a sink
    acts_CTS[index.sinks_CT] = 0
    fired = (acts_CTS > 0).flatten(0, 1)
    assert torch.allclose(index.density(), fired.float().sum(0) / int((~index.sinks_CT).sum()))
    assert torch.allclose(index.max_act(), acts_CTS.flatten(0, 1).amax(0), atol=1e-6)
    f = int(index.density().argmax())
    assert torch.allclose(index.context_maxima(f), acts_CTS[:, :, f].amax(1), atol=1e-6)
    assert torch.equal(index.token_ids_CT, ids_CT.to(torch.int32))

    again = FeatureIndex.from_bytes(index.to_bytes({"hook": HOOK}))
    assert torch.equal(again.values, index.values) and torch.equal(again.sinks_CT, index.sinks_CT)


def _planted_index() -> FeatureIndex:
    """Feature 0 fires on token 7 with strength = the context number; feature 1 never fires."""
    C, T = 20, 12
    ids = torch.full((C, T), 3)
    ids[:10, 5] = 7  # contexts 0..9 hold the token at position 5
    acts = torch.zeros(C, T, 2)
    acts[:10, 5, 0] = torch.arange(1, 11).float()
    docs = torch.arange(C).repeat_interleave(T).view(C, T)
    sinks = torch.zeros(C, T, dtype=torch.bool)
    sinks[:, 0] = True
    return FeatureIndex.from_dense(ids, docs, sinks, acts)


def test_top_quantile_and_silent_windows():
    index = _planted_index()
    top = index.top_examples(0, 3, before=2, after=1)
    assert [e.context for e in top] == [9, 8, 7]
    assert [e.max_act for e in top] == [10.0, 9.0, 8.0]
    assert top[0].start == 3 and top[0].token_ids == [3, 3, 7, 3] and top[0].doc_id == 9

    g = torch.Generator().manual_seed(0)
    bins = index.quantile_examples(0, 2, 2, before=2, after=1, exclude={9, 8, 7}, generator=g)
    low, high = ({e.context for e in b} for b in bins)
    assert low <= {0, 1, 2} and high <= {3, 4, 5, 6} and len(low) == len(high) == 2

    silent = index.silent_examples(0, 5, length=4, generator=g)
    assert len(silent) == 5 and all(e.max_act == 0 and len(e.token_ids) == 4 for e in silent)
    assert index.top_examples(1, 3, before=2, after=1) == []
    assert index.density()[1] == 0 and index.n_ordinary == 20 * 11
