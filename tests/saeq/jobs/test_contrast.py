"""Contrastive search on a tiny Llama: a feature planted to fire only on texts of set A comes out
first with a held-out AUROC interval above 0.5; between two sets drawn alike, the features chosen
on the selection half look separating there but their held-out intervals hold 0.5."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from saeq.errors import InvalidSpec
from saeq.jobs.contrast import auroc_columns, contrast_features, text_activations
from saeq.ml.features import read_hook
from saeq.ml.sae import SparseAutoencoder
from saeq.ml.sinks import SinkReference

HOOK = "blocks.1.hook_resid_post"
MARK = 7
"""The token that only texts of set A contain."""
PLANTED = 5
ONLY_POSITION_0 = SinkReference(median_norm=1.0, norm_factor=1e9)


def _texts(rng: np.random.Generator, n: int, *, marked: bool) -> list[list[int]]:
    texts = []
    for _ in range(n):
        ids = rng.integers(10, 400, size=int(rng.integers(12, 30))).tolist()
        if marked:
            for pos in rng.choice(np.arange(1, len(ids)), size=2, replace=False):
                ids[pos] = MARK
        texts.append(ids)
    return texts


@pytest.fixture(scope="module")
def sets():
    rng = np.random.default_rng(0)
    return _texts(rng, 24, marked=True), _texts(rng, 24, marked=False)


@pytest.fixture(scope="module")
def sae(tiny_llama, sets):
    """A ReLU SAE of random features, one of which (PLANTED) reads the MARK token's direction with a
    bias that lets it fire on MARK tokens only."""
    torch.manual_seed(0)
    sae = SparseAutoencoder(tiny_llama.d_model, 64, "relu").eval()
    marks, others = [], []
    with torch.no_grad():
        for ids in sets[0] + sets[1]:
            x_TD = read_hook(tiny_llama, HOOK, torch.tensor([ids]))
            is_mark = torch.tensor(ids) == MARK
            is_mark[0] = False
            marks.append(x_TD[is_mark])
            others.append(x_TD[1:][~is_mark[1:]])
        mark_D, other_D = torch.cat(marks), torch.cat(others)
        u = mark_D.mean(0) - other_D.mean(0)
        u /= u.norm()
        lowest_mark, highest_other = float((mark_D @ u).min()), float((other_D @ u).max())
        assert lowest_mark > highest_other  # the MARK token's direction tells it apart in this model
        sae.W_enc[:, PLANTED] = u
        sae.b_enc[PLANTED] = -(lowest_mark + highest_other) / 2
    return sae


def test_text_activations_are_each_texts_own_encode_batched_or_not(tiny_llama, sae, sets):
    texts = sets[0][:6]
    acts_NS = text_activations(tiny_llama, sae, HOOK, texts, sinks=ONLY_POSITION_0, aggregate="max", field="a")
    means_NS = text_activations(tiny_llama, sae, HOOK, texts, sinks=ONLY_POSITION_0, aggregate="mean", field="a")
    for i, ids in enumerate(texts):
        with torch.no_grad():
            acts_TS = sae.encode(read_hook(tiny_llama, HOOK, torch.tensor([ids])))[1:]  # position 0 a sink
        np.testing.assert_allclose(acts_NS[i], acts_TS.amax(0).numpy(), atol=1e-5)
        np.testing.assert_allclose(means_NS[i], acts_TS.mean(0).numpy(), atol=1e-5)
    assert (acts_NS[:, PLANTED] > 0).all()  # every text of A has MARK tokens


def test_the_planted_feature_comes_out_first_and_holds_on_held_out_texts(tiny_llama, sae, sets):
    a = text_activations(tiny_llama, sae, HOOK, sets[0], sinks=ONLY_POSITION_0, aggregate="max", field="a")
    b = text_activations(tiny_llama, sae, HOOK, sets[1], sinks=ONLY_POSITION_0, aggregate="max", field="b")
    assert (b[:, PLANTED] == 0).all()
    higher_on_a, higher_on_b = contrast_features(a, b, top_k=5, seed=0)
    top = higher_on_a[0]
    assert top.feature == PLANTED and top.selection_auroc == 1.0
    assert top.held_out_auroc.value == 1.0 and top.held_out_auroc.low > 0.5 and top.held_out_auroc.n == 24
    assert top.held_out_cohens_d is not None and top.held_out_cohens_d.low > 1.0
    assert top.mean_a > 0 and top.mean_b == 0
    assert len(higher_on_b) == 5 and PLANTED not in [f.feature for f in higher_on_b]
    assert all(f.higher_on == "b" and f.selection_auroc >= 0.5 for f in higher_on_b)


def test_between_sets_drawn_alike_the_chosen_features_do_not_hold_out(tiny_llama, sae):
    rng = np.random.default_rng(1)
    texts = _texts(rng, 48, marked=False)
    acts = text_activations(tiny_llama, sae, HOOK, texts, sinks=ONLY_POSITION_0, aggregate="max", field="a")
    higher_on_a, higher_on_b = contrast_features(acts[:24], acts[24:], top_k=10, seed=0)
    chosen = higher_on_a + higher_on_b
    assert max(f.selection_auroc for f in chosen) > 0.7  # the choice flatters the selection half
    holding = [f for f in chosen if f.held_out_auroc.low > 0.5]
    assert len(holding) <= 2, [(f.feature, f.held_out_auroc.text()) for f in holding]  # 5% of 20 expected by chance


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(2)
    pos, neg = rng.integers(0, 4, size=(9, 3)).astype(float), rng.integers(0, 4, size=(7, 3)).astype(float)
    labels = [1] * 9 + [0] * 7
    want = [roc_auc_score(labels, np.concatenate([pos[:, s], neg[:, s]])) for s in range(3)]
    np.testing.assert_allclose(auroc_columns(pos, neg), want)


def test_bad_input_names_the_field(tiny_llama, sae, sets):
    with pytest.raises(InvalidSpec) as e:
        contrast_features(np.zeros((3, 64)), np.zeros((8, 64)), top_k=3)
    assert e.value.field == "a"
    with pytest.raises(InvalidSpec) as e:  # one token: position 0, a sink
        text_activations(
            tiny_llama, sae, HOOK, [sets[0][0], [42]], sinks=ONLY_POSITION_0, aggregate="max", field="b.texts"
        )
    assert e.value.field == "b.texts.1"
