"""Carrying labels between two SAEs' features (saeq.jobs.label_carry)."""

from __future__ import annotations

import math

import torch

from saeq.jobs.label_carry import carried_labels, carry_summary, match_features, other_feature, with_carried
from saeq.ml.features import FeatureIndex

C, T, D_IN, D_SAE = 6, 16, 64, 32
OTHER_JOB = "b" * 32


def _index(acts_CTS: torch.Tensor, token_seed: int = 0) -> FeatureIndex:
    g = torch.Generator().manual_seed(token_seed)
    token_ids = torch.randint(0, 100, (C, T), generator=g, dtype=torch.int32)
    sinks = torch.zeros(C, T, dtype=torch.bool)
    sinks[:, 0] = True
    return FeatureIndex.from_dense(token_ids, torch.zeros(C, T, dtype=torch.int32), sinks, acts_CTS)


def _sae(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(D_SAE, D_IN, generator=g)
    acts = torch.relu(torch.randn(C, T, D_SAE, generator=g) - 1.0)  # sparse: ~16% fire
    return W_dec, acts


def _records(labelled: range) -> list[dict]:
    return [
        {"feature": f, "explainer": "metadata", "label": f"label-{f}", "description": "", "scores": {}}
        for f in labelled
    ]


def test_a_permuted_copy_carries_every_label_to_its_permuted_feature_at_cosine_one():
    W_a, acts_a = _sae(0)
    perm = torch.randperm(D_SAE, generator=torch.Generator().manual_seed(1))
    W_b, acts_b = W_a[perm], acts_a[..., perm]  # B's feature j is A's feature perm[j]
    m = match_features(W_a, W_b, index_a=_index(acts_a), index_b=_index(acts_b), min_cosine=0.7, min_correlation=0.5)
    assert m.method == "decoder+activations"
    carried = carried_labels(m, _records(range(D_SAE)), label_job=OTHER_JOB)
    assert len(carried) == D_SAE
    for j, a in enumerate(perm.tolist()):
        c = carried[a]
        assert (c["feature"], c["label"], c["label_job"]) == (j, f"label-{j}", OTHER_JOB)
        assert math.isclose(c["decoder_cosine"], 1.0, abs_tol=1e-6)
        assert math.isclose(c["activation_correlation"], 1.0, abs_tol=1e-6)
    own = _records(range(4))
    out = with_carried(own, carried)
    # the job's own label stays; the carried one sits beside it
    assert [r["label"] for r in out] == [r["label"] for r in own]
    assert out[0]["carried_from"]["label"] == f"label-{perm.tolist().index(0)}"
    summary = carry_summary(m, carried, own, label_job=OTHER_JOB)
    assert (summary["n_matched"], summary["n_stable"], summary["n_carried"], summary["n_carried_to_labelled"]) == (
        D_SAE,
        D_SAE,
        D_SAE,
        4,
    )


def test_an_unrelated_sae_carries_nothing_though_every_feature_has_a_partner():
    W_a, acts_a = _sae(0)
    W_b, acts_b = _sae(7)
    m = match_features(W_a, W_b, index_a=_index(acts_a), index_b=_index(acts_b), min_cosine=0.7, min_correlation=0.5)
    assert (m.match_A >= 0).all()
    assert carried_labels(m, _records(range(D_SAE)), label_job=OTHER_JOB) == {}
    page = other_feature(m, 0, label_job=OTHER_JOB, other_best={})
    assert page is not None and page["stable"] is False and page["label"] is None
    assert page["decoder_cosine"] < 0.7


def test_indexes_of_other_tokens_match_on_the_decoder_only_and_say_so():
    W_a, acts_a = _sae(0)
    m = match_features(
        W_a,
        W_a.clone(),
        index_a=_index(acts_a),
        index_b=_index(acts_a, token_seed=5),
        min_cosine=0.7,
        min_correlation=0.5,
    )
    assert m.method == "decoder only"
    carried = carried_labels(m, _records(range(3)), label_job=OTHER_JOB)
    assert sorted(carried) == [0, 1, 2]
    assert carried[0]["activation_correlation"] is None and carried[0]["method"] == "decoder only"


def test_a_crosscoder_decoder_is_matched_as_one_direction_per_feature():
    g = torch.Generator().manual_seed(3)
    W_a = torch.randn(D_SAE, 2, D_IN, generator=g)
    perm = torch.randperm(D_SAE, generator=g)
    m = match_features(W_a, W_a[perm], index_a=None, index_b=None, min_cosine=0.99, min_correlation=0.5)
    assert (m.match_A[perm.numpy()] == torch.arange(D_SAE).numpy()).all()
