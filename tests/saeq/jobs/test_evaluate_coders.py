"""One accounting for every coder: a crosscoder spliced at all its layers at once (a crosscoder
that writes nothing is their joint zero-ablation; each layer's FVU is its own error over its own
variance), a transcoder's pass is the evaluate pass with its intervals, and a hook, target or layer
list that does not fit the coder is refused naming the spec field."""

from __future__ import annotations

import pytest
import torch

from saeq.checks.documents import document_activations
from saeq.errors import InvalidSpec
from saeq.jobs.evaluate import evaluate_sae
from saeq.jobs.evaluate_crosscoder import evaluate_crosscoder
from saeq.jobs.evaluate_report import markdown
from saeq.jobs.evaluate_transcoder import evaluate_transcoder
from saeq.ml import hookpoints
from saeq.ml.sae import SparseAutoencoder, TopKCrosscoder, TopKSkipTranscoder

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
TC_HOOK, TC_TARGET = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"


def _contexts(lm, n: int = 8, T: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, lm.tokenizer.vocab_size, (n // 2, T), generator=g) for _ in range(2)]


def _crosscoder(lm, k: int = 6) -> TopKCrosscoder:
    torch.manual_seed(0)
    cc = TopKCrosscoder(2 * lm.d_model, 128, k=k, n_layers=2)
    assert isinstance(cc, TopKCrosscoder)
    return cc.eval()


def test_a_crosscoder_that_writes_nothing_is_the_zero_ablation_of_all_its_layers(tiny_llama):
    cc = _crosscoder(tiny_llama)
    with torch.no_grad():
        cc.W_dec.zero_()
    r = evaluate_crosscoder(cc, tiny_llama, _contexts(tiny_llama), hooks=HOOKS, sinks=None)
    m = r.metrics
    assert abs(m["ce_loss_recovered"]) < 1e-5 and abs(m["kl_crosscoder"] - m["kl_zero"]) < 1e-6
    assert m["kl_zero"] > 0 and all(v > 0.99 for v in r.fvu_per_layer)
    assert r.full is not None and r.full.splice == {"kind": "crosscoder", "reads": HOOKS, "replaces": HOOKS}


def test_each_layers_fvu_is_its_own_error_over_its_own_variance(tiny_llama):
    lm, contexts, cc = tiny_llama, _contexts(tiny_llama), _crosscoder(tiny_llama)
    r = evaluate_crosscoder(cc, lm, contexts, hooks=HOOKS, sinks=None)
    seen: dict[str, list[torch.Tensor]] = {h: [] for h in HOOKS}
    with torch.inference_mode():
        for ids in contexts:
            with (
                hookpoints.read(lm.model, HOOKS[0], lambda x: seen[HOOKS[0]].append(x)),
                hookpoints.read(lm.model, HOOKS[1], lambda x: seen[HOOKS[1]].append(x)),
            ):
                lm.model(input_ids=ids)
        x = torch.cat([torch.cat(seen[h]).reshape(-1, lm.d_model) for h in HOOKS], dim=1)
        recon = cc.layers(cc.decode(cc.encode(x)))
    rows = cc.layers(x)
    err_L = (rows - recon).pow(2).sum((0, 2))
    var_L = (rows - rows.mean(0)).pow(2).sum((0, 2))
    assert r.fvu_per_layer == pytest.approx((err_L / var_L).tolist(), rel=1e-4)
    assert r.metrics["fvu"] == pytest.approx(float(err_L.sum() / var_L.sum()), rel=1e-4)
    full = r.full
    assert full is not None and full.intervals["ce_loss_recovered"].n == 8  # one per context
    assert full.metrics["kl_div_with_sae"] == r.metrics["kl_crosscoder"]
    # The report's table of layers: each FVU with its interval over the 8 contexts.
    page = markdown(full, {}, [])
    for hook, ci in zip(HOOKS, full.fvu_per_layer_intervals or [], strict=True):
        assert f"| `{hook}` | {ci.text('{:.4f}')} |" in page and "(n=8 contexts)" in page
    assert full.fvu_per_layer_intervals is not None and len(full.fvu_per_layer_intervals) == 2
    for est, value in zip(full.fvu_per_layer_intervals, r.fvu_per_layer, strict=True):
        assert est.value == value and est.low < value < est.high and (est.n, est.unit) == (8, "contexts")


def test_a_transcoders_pass_is_the_evaluate_pass_with_intervals(tiny_llama):
    tc = TopKSkipTranscoder(tiny_llama.d_model, 64, k=4)
    assert isinstance(tc, TopKSkipTranscoder)
    contexts = _contexts(tiny_llama)
    r = evaluate_transcoder(tc, tiny_llama, contexts, hook=TC_HOOK, target_hook=TC_TARGET, sinks=None)
    job = evaluate_sae(tc, tiny_llama, TC_HOOK, contexts, sinks=None, target_hook=TC_TARGET)
    assert r.metrics["ce_loss_recovered"] == job.metrics["ce_loss_recovered"]
    assert r.metrics["kl_transcoder"] == job.metrics["kl_div_with_sae"]
    assert job.splice == {"kind": "transcoder", "reads": [TC_HOOK], "replaces": [TC_TARGET]}
    est = job.intervals["kl_div_with_sae"]
    assert est.low <= est.value <= est.high and est.n == 8


def test_what_does_not_fit_the_coder_is_refused_naming_the_field(tiny_llama):
    lm, contexts = tiny_llama, _contexts(tiny_llama)
    tc = SparseAutoencoder(lm.d_model, 64, "topk_transcoder", k=4)
    plain = SparseAutoencoder(lm.d_model, 64, "topk", k=4)
    cases = [
        (lambda: evaluate_sae(tc, lm, TC_HOOK, contexts, sinks=None), "spec.target_hook"),
        (lambda: evaluate_sae(tc, lm, TC_TARGET, contexts, sinks=None, target_hook=TC_HOOK), "spec.hook"),
        (lambda: evaluate_sae(plain, lm, HOOKS[0], contexts, sinks=None, target_hook=TC_TARGET), "spec.target_hook"),
        (lambda: evaluate_sae(plain, lm, HOOKS[0], contexts, sinks=None, layer_hooks=HOOKS), "spec.hooks"),
        (lambda: evaluate_sae(_crosscoder(lm), lm, HOOKS[0], contexts, sinks=None), "spec.hooks"),
        (lambda: evaluate_crosscoder(_crosscoder(lm), lm, contexts, hooks=HOOKS[:1], sinks=None), "spec.hooks"),
        (lambda: evaluate_sae(_crosscoder(lm), lm, HOOKS[1], contexts, sinks=None, layer_hooks=HOOKS), "spec.hook"),
    ]
    for run, field in cases:
        with pytest.raises(InvalidSpec) as e:
            run()
        assert e.value.field == field, (field, e.value)


def test_the_checks_read_a_crosscoders_features_from_all_its_layers(tiny_llama):
    lm, cc = tiny_llama, _crosscoder(tiny_llama)
    ids = [[1, *range(5, 17)], [1, *range(20, 28)]]
    acts = document_activations(cc, lm, HOOKS[0], ids, sinks=None, batch_size=2, layer_hooks=HOOKS)
    assert acts.raw_mean_DM.shape == (2, 2 * lm.d_model) and acts.max_DS.shape == (2, 128)
    assert (acts.max_DS > 0).sum(1).min() >= 6  # k latents fire on every ordinary token
    with pytest.raises(InvalidSpec, match="d_in=64"):
        document_activations(cc, lm, HOOKS[0], ids, sinks=None, batch_size=2)  # one hook: the wrong width


def test_a_crosscoders_pass_resumes_from_its_kept_sums_bit_identically(tiny_llama):
    from saeq.jobs.evaluate import EvalProgress

    lm, contexts, cc = tiny_llama, _contexts(tiny_llama), _crosscoder(tiny_llama)
    kept: list[bytes] = []
    whole = evaluate_sae(
        cc,
        lm,
        HOOKS[0],
        contexts,
        sinks=None,
        layer_hooks=HOOKS,
        chunk_batches=1,
        on_chunk=lambda p: kept.append(p.to_bytes({})),
    )
    progress, _ = EvalProgress.from_bytes(kept[0])  # the first batch summed, as a killed attempt left it
    # the first batch is read from the kept sums, not computed: other tokens there change nothing
    again = [torch.full_like(contexts[0], 5), contexts[1]]
    resumed = evaluate_sae(cc, lm, HOOKS[0], again, sinks=None, layer_hooks=HOOKS, resume=progress)
    assert resumed.metrics == whole.metrics and resumed.fvu_per_layer == whole.fvu_per_layer
    assert resumed.intervals == whole.intervals and resumed.fvu_per_layer_intervals == whole.fvu_per_layer_intervals
