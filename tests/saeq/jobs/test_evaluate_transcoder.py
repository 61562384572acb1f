"""Evaluating a transcoder replaces the MLP's output in the model: a transcoder that predicts
nothing is the zero-ablation (0% of the CE loss recovered), a least-squares fit of the MLP
recovers part of it, FVU is measured against the MLP's output."""

from __future__ import annotations

import torch

from saeq.jobs.evaluate_transcoder import evaluate_transcoder
from saeq.ml import hookpoints
from saeq.ml.sae import SparseAutoencoder, Transcoder
from saeq.ml.sinks import SinkReference

HOOK, TARGET = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"


def _contexts(lm, n: int = 6, T: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, lm.tokenizer.vocab_size, (n, T), generator=g)]


def _skip_transcoder(lm) -> Transcoder:
    sae = SparseAutoencoder(lm.d_model, 64, "topk_skip_transcoder", k=4)
    assert isinstance(sae, Transcoder)
    return sae.eval()


def test_a_transcoder_that_predicts_nothing_is_the_zero_ablation(tiny_llama):
    tc = _skip_transcoder(tiny_llama)
    with torch.no_grad():
        tc.W_dec.zero_()
    r = evaluate_transcoder(tc, tiny_llama, _contexts(tiny_llama), hook=HOOK, target_hook=TARGET, sinks=None)
    m = r.metrics
    assert abs(m["ce_loss_recovered"]) < 1e-5 and abs(m["ce_transcoder"] - m["ce_zero"]) < 1e-5
    assert abs(m["kl_transcoder"] - m["kl_zero"]) < 1e-5 and m["kl_zero"] > 0
    assert r.counts == {"tokens": 96, "ordinary_tokens": 96, "sinks_excluded": 0, "loss_positions": 90}


def test_a_least_squares_fit_of_the_mlp_recovers_part_of_the_loss(tiny_llama):
    lm, contexts = tiny_llama, _contexts(tiny_llama, n=24)
    seen: dict[str, torch.Tensor] = {}
    with (
        torch.inference_mode(),
        hookpoints.read(lm.model, HOOK, lambda x: seen.__setitem__("x", x)),
        hookpoints.read(lm.model, TARGET, lambda y: seen.__setitem__("y", y)),
    ):
        lm.model(input_ids=contexts[0])
    x, y = (seen[k].reshape(-1, lm.d_model).float() for k in "xy")
    A = torch.linalg.lstsq(x, y).solution  # (d, d): y ~ x @ A
    tc = _skip_transcoder(lm)
    with torch.no_grad():
        tc.W_dec.zero_()
        tc.W_skip.copy_(A.T)
    sinks = SinkReference(median_norm=float(x.norm(dim=1).median()), norm_factor=5.0)
    r = evaluate_transcoder(tc, lm, contexts, hook=HOOK, target_hook=TARGET, sinks=sinks)
    m = r.metrics
    keep = torch.arange(x.shape[0]) % 16 != 0  # the sinks here: position 0 only (no norm outliers)
    assert r.counts["sinks_excluded"] == 24
    resid = (y[keep] - x[keep] @ A).pow(2).sum()
    fvu = resid / (y[keep] - y[keep].mean(0)).pow(2).sum()
    assert abs(m["fvu"] - float(fvu)) < 1e-4
    assert 0.2 < m["ce_loss_recovered"] < 1.0 and m["kl_transcoder"] < m["kl_zero"]
