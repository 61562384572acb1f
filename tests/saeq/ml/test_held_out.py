"""The held-out figures' intervals (measure): each contains its figure with n the contexts it was
resampled over; from a small sample they cover a fixed SAE's large-sample FVU at about the nominal
rate, where an interval over tokens, blind to the contexts, does not; the latent fractions are
Wilson intervals over the latents."""

from __future__ import annotations

import pytest
import torch

from saeq.ml.held_out import BLOCK_TOKENS, MAX_GROUPS, token_groups
from saeq.ml.sae import sae_class
from saeq.ml.training import measure

pytestmark = pytest.mark.usefixtures("one_thread")

D, CONTEXT_LEN = 16, 16


def fixed_sae():
    torch.manual_seed(0)
    return sae_class("topk")(D, 32, k=2, generator=torch.Generator().manual_seed(0)).eval()


def contexts_of_tokens(n_contexts: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows (n_contexts * CONTEXT_LEN, D), the context of each row): a context's tokens share a
    large offset (its topic), so they are strongly correlated, as a harvest's are."""
    offset_C1D = 1.5 * torch.randn(n_contexts, 1, D, generator=gen)
    x_CTD = offset_C1D + 0.5 * torch.randn(n_contexts, CONTEXT_LEN, D, generator=gen)
    return x_CTD.reshape(-1, D), torch.arange(n_contexts).repeat_interleave(CONTEXT_LEN)


def test_each_interval_contains_its_figure_and_n_counts_the_contexts():
    sae = fixed_sae()
    x, contexts = contexts_of_tokens(200, torch.Generator().manual_seed(1))
    keep = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(2)) > 0.1  # sinks left out
    m = measure(sae, x[keep], contexts=contexts[keep] + 7, dead_fraction=0.25, chunk=500)
    assert set(m.intervals) == {"fvu", "mse", "l0", "dead_fraction", "dead_fraction_validation", "dense_fraction"}
    for name, method in (("fvu", "basic_bootstrap"), ("mse", "bootstrap"), ("l0", "bootstrap")):
        est = m.intervals[name]
        assert est.value == getattr(m, name) and est.contains(est.value), (name, est)
        assert (est.n, est.unit, est.method) == (200, "contexts", method)
    assert m.intervals["fvu"].high - m.intervals["fvu"].low > 0.01 * m.fvu
    assert m.intervals["l0"].low == m.intervals["l0"].high == 2.0  # TopK: every token has k active
    for name in ("dead_fraction", "dead_fraction_validation", "dense_fraction"):
        est = m.intervals[name]
        assert est.value == pytest.approx(getattr(m, name)) and est.contains(est.value)
        assert (est.n, est.unit, est.method) == (32, "latents", "wilson")
    assert m.intervals["dead_fraction"].value == 0.25 and m.intervals["dead_fraction"].high < 0.5


def test_without_contexts_blocks_of_contiguous_tokens_are_resampled_and_many_groups_are_merged():
    m = measure(fixed_sae(), contexts_of_tokens(64, torch.Generator().manual_seed(1))[0])
    assert (m.intervals["fvu"].n, m.intervals["fvu"].unit) == (64 * CONTEXT_LEN // BLOCK_TOKENS, "blocks of 128 tokens")
    ids, n_groups, unit = token_groups(5000, torch.arange(5000))  # 5000 one-token contexts
    assert n_groups <= MAX_GROUPS and (n_groups, unit) == (1000, "blocks of 5 contexts")
    assert torch.equal(torch.bincount(ids), torch.full((1000,), 5)) and bool((ids.diff() >= 0).all())


def test_the_interval_from_64_contexts_covers_the_large_sample_fvu_and_a_per_token_one_does_not():
    sae = fixed_sae()
    gen = torch.Generator().manual_seed(3)
    truth = measure(sae, contexts_of_tokens(20_000, gen)[0], chunk=65_536).fvu  # 320,000 tokens
    by_context = by_token = 0
    for _ in range(40):
        x, contexts = contexts_of_tokens(64, gen)
        by_context += measure(sae, x, contexts=contexts).intervals["fvu"].contains(truth)
        by_token += measure(sae, x, contexts=torch.arange(x.shape[0])).intervals["fvu"].contains(truth)
    assert by_context >= 36, by_context  # 95% nominal; the percentile bootstrap runs a little under
    assert by_token <= 30, by_token  # tokens of a context counted as independent: far too narrow


def test_a_harvests_held_out_rows_are_grouped_by_the_context_they_come_from(tmp_path):
    from saeq.ml.activations import HarvestData
    from saeq.platform.store import LocalStore
    from tests.saeq.conftest import fake_harvest

    n, t = 1024, 16
    x = torch.randn(n, D, generator=torch.Generator().manual_seed(0))
    x[:, 0] = torch.arange(n) / n  # each row's index in the harvest, over n
    x[::t, 1:] *= 100  # position 0 of every context: an attention sink, left out
    store = LocalStore(tmp_path / "store")
    manifest = fake_harvest(store, "c" * 32, x, context_len=t, shard_tokens=64)
    data = HarvestData(manifest, "blocks.1.hook_resid_post", store.get, batch_size=50, validation_tokens=200)
    rows = data.validation()  # 13 whole contexts, the tail cut inside a shard
    index = (rows[:, 0] * n).round().long()
    assert torch.equal(data.validation_contexts(), (index - (n - 13 * t)) // t)
    m = measure(fixed_sae(), rows[:, :D], contexts=data.validation_contexts())
    assert (m.intervals["fvu"].n, m.validation_tokens) == (13, 13 * (t - 1))  # 13 contexts less their sinks
