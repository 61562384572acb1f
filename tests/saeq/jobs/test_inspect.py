"""Inspect on a tiny Llama: each ordinary token's top features are the SAE's encode of the hook,
sinks (position 0, norm outliers) are named and left out, chosen features are read on every token."""

from __future__ import annotations

import pytest
import torch

from saeq.errors import InvalidSpec
from saeq.jobs.inspect import inspect_tokens
from saeq.ml.features import read_hook
from saeq.ml.sae import SparseAutoencoder
from saeq.ml.sinks import SinkReference

HOOK = "blocks.1.hook_resid_post"
IDS = list(range(10, 30))


@pytest.fixture(scope="module")
def sae():
    torch.manual_seed(0)
    return SparseAutoencoder(32, 128, "topk", k=8).eval()


def test_top_features_are_the_encode_of_the_hook_and_sinks_are_left_out(tiny_llama, sae):
    with torch.no_grad():
        x_TD = read_hook(tiny_llama, HOOK, torch.tensor([IDS]))
        acts_TS = sae.encode(x_TD)
    norms = x_TD.norm(dim=-1)
    median = float(norms[1:].median())
    loud = int(norms[1:].argmax()) + 1  # the loudest token after position 0: a sink at this factor
    factor = float(norms[loud]) / median - 1e-3
    out = inspect_tokens(tiny_llama, sae, HOOK, IDS, sinks=SinkReference(median, factor), top_k=5, features=[3, 7])
    assert out.sinks[0] == "position0" and out.sinks[loud] == "norm"
    assert sum(s is not None for s in out.sinks) == 2
    for t in range(len(IDS)):
        if out.sinks[t]:
            assert out.top_features[t] == [] and out.chosen is not None and out.chosen[t] is None
            continue
        vals, idx = acts_TS[t].topk(5)
        assert out.top_features[t] == idx.tolist()  # a TopK with k=8: the first 5 are non-zero
        assert out.top_activations[t] == pytest.approx(vals.tolist(), abs=1e-5)
        assert out.chosen is not None and out.chosen[t] == pytest.approx(acts_TS[t, [3, 7]].tolist(), abs=1e-5)
    assert out.norms == pytest.approx(norms.tolist(), rel=1e-5)


def test_without_the_sink_rule_every_token_is_reported_and_only_non_zero_features(tiny_llama, sae):
    out = inspect_tokens(tiny_llama, sae, HOOK, IDS, sinks=None, top_k=20)
    assert out.sinks == [None] * len(IDS) and out.chosen is None
    assert all(len(fs) == 8 for fs in out.top_features)  # k=8 non-zero of the 20 asked for
    assert all(a > 0 for acts in out.top_activations for a in acts)


def test_a_feature_beyond_the_sae_is_refused_naming_it(tiny_llama, sae):
    with pytest.raises(InvalidSpec) as e:
        inspect_tokens(tiny_llama, sae, HOOK, IDS, sinks=None, top_k=3, features=[1, 128])
    assert e.value.field == "features.1"
