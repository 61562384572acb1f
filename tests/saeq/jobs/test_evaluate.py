"""Evaluation metrics: the splice's end points, and agreement with SAELens's own evaluation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from saeq.jobs.evaluate import evaluate_sae
from saeq.jobs.evaluate_intervals import COLUMN
from saeq.ml.sae import SparseAutoencoder
from saeq.ml.sinks import SinkReference
from saeq.ml.splice import splice
from tests.helpers import import_peer
from tests.saeq.conftest import tiny_lm

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def lm(tiny_tokenizer):
    return tiny_lm(tiny_tokenizer, n_layers=3, d_model=32)


def _contexts(n_batches=3, B=4, T=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 512, (B, T), generator=g) for _ in range(n_batches)]


def identity_sae(d: int) -> SparseAutoencoder:
    """ReLU SAE with latents [x, -x]: relu(x) - relu(-x) = x, an exact reconstruction."""
    sae = SparseAutoencoder(d, 2 * d, "relu")
    with torch.no_grad():
        eye = torch.eye(d)
        sae.W_enc.copy_(torch.cat([eye, -eye], dim=1))
        sae.W_dec.copy_(torch.cat([eye, -eye], dim=0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def zero_sae(d: int) -> SparseAutoencoder:
    sae = SparseAutoencoder(d, 4 * d, "relu")
    with torch.no_grad():
        for p in sae.parameters():
            p.zero_()
    return sae


def test_identity_sae_recovers_all_of_the_loss(lm):
    m = evaluate_sae(identity_sae(32), lm, HOOK, _contexts(), sinks=None).metrics
    assert m["ce_loss_recovered"] == pytest.approx(1.0, abs=1e-4)
    assert m["fvu"] == pytest.approx(0.0, abs=1e-8) and m["kl_div_with_sae"] == pytest.approx(0.0, abs=1e-6)
    assert abs(m["ce_loss_with_ablation"] - m["ce_loss_clean"]) > 1e-3  # a ratio with a real denominator


def test_zero_sae_recovers_none_of_the_loss(lm):
    m = evaluate_sae(zero_sae(32), lm, HOOK, _contexts(), sinks=None).metrics
    assert m["ce_loss_recovered"] == pytest.approx(0.0, abs=1e-6)
    assert m["fvu"] >= 1.0  # predicting 0 is no better than predicting the mean
    assert m["l0"] == 0 and m["dead_fraction"] == 1.0


def test_sinks_are_left_out_and_stay_clean(lm):
    ctx = _contexts()
    # With an enormous norm factor, the rule marks position 0 only.
    res = evaluate_sae(zero_sae(32), lm, HOOK, ctx, sinks=SinkReference(median_norm=1.0, norm_factor=1e9))
    assert res.counts["n_sinks_excluded"] == 3 * 4  # position 0 of each context
    assert res.counts["n_ordinary"] == 3 * 4 * 23
    assert res.fvu_by_position[0] is None and res.fvu_by_position[1] is not None
    # The zero SAE leaves sinks clean: position 0's logits equal the clean model's.
    ids = ctx[0]
    with torch.no_grad():
        clean = lm.model(input_ids=ids).logits
        keep = torch.ones(ids.shape, dtype=torch.bool)
        keep[:, 0] = False
        with splice(lm.model, HOOK, lambda x: torch.where(keep[..., None], torch.zeros_like(x), x)):
            spliced = lm.model(input_ids=ids).logits
    torch.testing.assert_close(spliced[:, 0], clean[:, 0])


def test_d_in_mismatch_is_a_clear_error(lm):
    from saeq.errors import InvalidSpec

    with pytest.raises(InvalidSpec, match="d_in=48.*d_model=32"):
        evaluate_sae(SparseAutoencoder(48, 96, "relu"), lm, HOOK, _contexts(), sinks=None)


class _TLModel:
    """Just enough of TransformerLens's HookedRootModule for sae_lens.evals to drive our HF model."""

    def __init__(self, lm):
        self.model = lm.model

    def _run(self, tokens, fwd_hooks=()):
        import contextlib

        with contextlib.ExitStack() as stack:
            for name, fn in fwd_hooks:
                stack.enter_context(splice(self.model, name, lambda x, fn=fn: fn(x, hook=None)))
            logits = self.model(input_ids=tokens).logits
        logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
        loss = -logp.gather(-1, tokens[:, 1:, None])[..., 0]
        return logits, loss

    def __call__(self, tokens, return_type="both", loss_per_token=True, **_):
        return self._run(tokens)

    def run_with_hooks(self, tokens, return_type="both", fwd_hooks=(), loss_per_token=True, **_):
        return self._run(tokens, fwd_hooks)

    def run_with_cache(self, tokens, names_filter=(), **_):
        cache = {}
        with splice(self.model, names_filter[0], lambda x: cache.setdefault(names_filter[0], x)):
            self.model(input_ids=tokens)
        return None, cache


class _Store:
    def __init__(self, batches):
        self.batches = iter(batches)

    def get_batch_tokens(self, n):
        return next(self.batches)


def test_core_metrics_equal_saelens_evaluation(lm, tmp_path):
    sae_lens = import_peer("sae_lens")
    from sae_lens.evals import get_recons_loss, get_sparsity_and_variance_metrics
    from sae_lens.training.activation_scaler import ActivationScaler

    torch.manual_seed(3)
    ours = SparseAutoencoder(32, 128, "topk", k=8)
    ours.save(tmp_path / "sae", format="saelens", metadata={"hook_name": HOOK})
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "sae"), device="cpu")
    ctx = _contexts(n_batches=3)

    mine = evaluate_sae(ours, lm, HOOK, ctx, sinks=None).metrics
    model = _TLModel(lm)
    with torch.no_grad():
        sv, _ = get_sparsity_and_variance_metrics(
            theirs,
            model,
            _Store(ctx),
            ActivationScaler(),
            n_batches=3,
            compute_l2_norms=False,
            compute_sparsity_metrics=True,
            compute_variance_metrics=True,
            compute_featurewise_density_statistics=True,
            eval_batch_size_prompts=4,
            model_kwargs={},
        )
        recons = [
            get_recons_loss(
                theirs, model, ActivationScaler(), ids, compute_kl=True, compute_ce_loss=True, hook_name=HOOK
            )
            for ids in ctx
        ]
    ce = {
        k: torch.cat([r[k].flatten() for r in recons]).mean().item()
        for k in ("ce_loss_with_sae", "ce_loss_without_sae", "ce_loss_with_ablation")
    }
    kl = torch.cat([r["kl_div_with_sae"][:, :-1].flatten() for r in recons]).mean().item()
    theirs_recovered = (ce["ce_loss_with_ablation"] - ce["ce_loss_with_sae"]) / (
        ce["ce_loss_with_ablation"] - ce["ce_loss_without_sae"]
    )
    pairs = {
        "mse": sv["mse"],
        "explained_variance": sv["explained_variance"],
        "cossim": sv["cossim"],
        "l0": sv["l0"],
        "l1": sv["l1"],
        "ce_loss_with_sae": ce["ce_loss_with_sae"],
        "ce_loss_clean": ce["ce_loss_without_sae"],
        "ce_loss_with_ablation": ce["ce_loss_with_ablation"],
        "ce_loss_recovered": theirs_recovered,
        "kl_div_with_sae": kl,
    }
    for name, expected in pairs.items():
        assert math.isfinite(expected)
        assert mine[name] == pytest.approx(expected, rel=0.01), name


def test_every_metric_has_an_interval_over_the_contexts_around_its_value(lm):
    from saeq.specs.metrics import HEADLINE

    torch.manual_seed(3)
    sae = SparseAutoencoder(32, 128, "topk", k=8)
    kept = []
    res = evaluate_sae(
        sae,
        lm,
        HOOK,
        _contexts(),
        sinks=SinkReference(median_norm=1.0, norm_factor=1e9),
        chunk_batches=3,
        on_chunk=kept.append,
    )
    assert res.counts["n_contexts"] == 12
    # The per-context sums add up to the pass's own: the bootstrap resamples the same figures.
    s = kept[-1].stats
    for column, total in [("n", s.n), ("sum_sq_resid", s.sum_sq_resid), ("n_loss", s.n_loss), ("ce_sae", s.ce["sae"])]:
        assert float(s.group_sums[:, COLUMN[column]].sum()) == pytest.approx(total, rel=1e-6), column  # fp32 sums
    torch.testing.assert_close(s.group_sum_x.sum(0), s.sum_x)
    for key, _, _ in HEADLINE:
        est = res.intervals[key]
        assert est.value == res.metrics[key], key
        if key in ("dead_fraction", "dense_fraction"):
            assert (est.method, est.n, est.unit) == ("wilson", 128, "latents"), key
        elif key in ("fvu", "explained_variance"):  # about the sample's own mean: reflected quantiles
            assert (est.method, est.n, est.unit) == ("basic_bootstrap", 12, "contexts"), key
        else:
            assert (est.method, est.n, est.unit) == ("bootstrap", 12, "contexts"), key
        assert est.low <= est.value <= est.high, (key, est)
    assert res.intervals["fvu"].high - res.intervals["fvu"].low > 0  # 12 random contexts vary
    # The identity SAE has FVU 0 on every resample: an interval of width 0, not a guess.
    exact = evaluate_sae(identity_sae(32), lm, HOOK, _contexts(), sinks=None).intervals["fvu"]
    assert abs(exact.low) < 1e-8 and abs(exact.high) < 1e-8


def test_past_max_groups_adjacent_contexts_are_bootstrapped_in_blocks(lm, monkeypatch):
    import saeq.jobs.evaluate as evaluate

    torch.manual_seed(3)
    sae = SparseAutoencoder(32, 128, "topk", k=8)
    per_context = evaluate_sae(sae, lm, HOOK, _contexts(), sinks=None)
    monkeypatch.setattr(evaluate, "MAX_GROUPS", 5)  # 12 contexts: blocks of 4, 3 blocks
    blocked = evaluate_sae(sae, lm, HOOK, _contexts(), sinks=None)
    assert blocked.metrics == per_context.metrics
    fvu = blocked.intervals["fvu"]
    assert (fvu.n, fvu.unit) == (3, "blocks of 4 contexts")
    assert fvu.low <= fvu.value <= fvu.high
