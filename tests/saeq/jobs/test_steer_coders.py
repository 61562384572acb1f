"""Steering coders on a tiny Llama: a transcoder's feature is read at its input hook and written at
its output hook, a crosscoder's add writes each layer's decoder block at that layer, and what a
crosscoder cannot do causally (clamp, ablate, scale, triggers) is refused naming the field."""

from __future__ import annotations

import contextlib

import pytest
import torch

from saeq.errors import InvalidSpec
from saeq.jobs.steer import FeatureEdit, FeatureTrigger, Steering, check_edits, generate, steer_sites
from saeq.ml import hookpoints
from saeq.ml.features import read_hooks
from saeq.ml.sae import SparseAutoencoder

IN, OUT = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"
LAYERS = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")
PROMPT = list(range(10, 26))


@pytest.fixture(scope="module")
def transcoder():
    torch.manual_seed(0)
    tc = SparseAutoencoder(32, 128, "topk_transcoder", k=8).eval()
    with torch.no_grad():
        tc.W_dec.mul_(3.0)  # rows not of unit norm: add must still move by value along the unit row
    return tc


@pytest.fixture(scope="module")
def crosscoder():
    torch.manual_seed(0)
    return SparseAutoencoder(64, 128, "topk_crosscoder", k=8, n_layers=2).eval()


def _run(lm, steering: Steering | None, sites, watch: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """Activations at `watch` of one pass over PROMPT, with `steering` attached (reads after edits)."""
    seen: dict[str, torch.Tensor] = {}
    with contextlib.ExitStack() as stack, torch.no_grad():
        if steering is not None:
            stack.enter_context(steering.attached(lm.model, sites))
        for h in watch:
            stack.enter_context(hookpoints.read(lm.model, h, lambda x, h=h: seen.__setitem__(h, x[0].clone())))
        lm.model(input_ids=torch.tensor([PROMPT]), use_cache=False)
    return seen


def test_a_transcoder_clamp_reads_the_input_hook_and_writes_the_output_hook(tiny_llama, transcoder):
    sites = steer_sites(transcoder, IN, target_hook=OUT)
    assert sites.read == (IN,) and sites.write == (OUT,)
    clean = _run(tiny_llama, None, sites, (IN, OUT))
    with torch.no_grad():
        acts = transcoder.encode(clean[IN])  # (T, d_sae), the features of the MLP's input
    f = int((acts > 0).sum(0).argmax())
    edited = _run(tiny_llama, Steering(transcoder, [FeatureEdit(f, "clamp", 5.0)], len(PROMPT)), sites, (IN, OUT))
    torch.testing.assert_close(edited[IN], clean[IN])  # the input hook is read, never written
    expected = clean[OUT] + (5.0 - acts[:, f])[:, None] * transcoder.W_dec[f]
    torch.testing.assert_close(edited[OUT], expected, atol=1e-5, rtol=1e-5)

    added = _run(tiny_llama, Steering(transcoder, [FeatureEdit(f, "add", 2.0)], len(PROMPT)), sites, (OUT,))
    unit = transcoder.W_dec[f] / transcoder.W_dec[f].norm()
    torch.testing.assert_close(added[OUT] - clean[OUT], 2.0 * unit.expand_as(clean[OUT]), atol=1e-5, rtol=1e-5)


def test_ablating_a_silent_transcoder_feature_changes_nothing_and_adding_changes_the_text(tiny_llama, transcoder):
    sites = steer_sites(transcoder, IN, target_hook=OUT)
    default = generate(tiny_llama, PROMPT, max_new_tokens=10)
    with torch.no_grad():  # silent over the prompt and the default completion
        acts = transcoder.encode(read_hooks(tiny_llama, (IN,), torch.tensor([PROMPT + default.token_ids])))
    silent = int(((acts > 0).sum(0) == 0).nonzero()[0])
    kw = {"max_new_tokens": 10, "hook": IN, "sae": transcoder, "sites": sites}
    assert generate(tiny_llama, PROMPT, edits=[FeatureEdit(silent, "ablate")], **kw).token_ids == default.token_ids
    assert generate(tiny_llama, PROMPT, edits=[FeatureEdit(silent, "add", 200.0)], **kw).token_ids != default.token_ids


def test_a_crosscoder_add_writes_each_layer_its_decoder_block(tiny_llama, crosscoder):
    sites = steer_sites(crosscoder, LAYERS[0], layer_hooks=LAYERS)
    assert sites.read == sites.write == LAYERS and sites.acausal
    f, value = 5, 3.0
    clean = _run(tiny_llama, None, sites, LAYERS[:1])
    edited = _run(tiny_llama, Steering(crosscoder, [FeatureEdit(f, "add", value)], len(PROMPT)), sites, LAYERS)
    block_LD = crosscoder.W_dec[f].view(2, 32) / crosscoder.W_dec[f].norm()
    torch.testing.assert_close(edited[LAYERS[0]] - clean[LAYERS[0]], value * block_LD[0].expand(len(PROMPT), -1))
    default = generate(tiny_llama, PROMPT, max_new_tokens=10)
    kw = {"max_new_tokens": 10, "hook": LAYERS[0], "sae": crosscoder, "sites": sites}
    assert generate(tiny_llama, PROMPT, edits=[FeatureEdit(f, "add", 0.0)], **kw).token_ids == default.token_ids
    assert generate(tiny_llama, PROMPT, edits=[FeatureEdit(f, "add", 200.0)], **kw).token_ids != default.token_ids
    # positions count per layer across KV-cached steps: the prompt untouched, the first new token as before
    later = generate(tiny_llama, PROMPT, edits=[FeatureEdit(f, "add", 200.0, "generated")], **kw).token_ids
    assert later[0] == default.token_ids[0] and later != default.token_ids


def test_a_crosscoder_refuses_edits_that_read_its_activation_naming_the_field(crosscoder):
    sites = steer_sites(crosscoder, LAYERS[0], layer_hooks=LAYERS)
    for edit, field in (
        (FeatureEdit(3, "clamp", 1.0), "spec.interventions[1].mode"),
        (FeatureEdit(3, "ablate"), "spec.interventions[1].mode"),
        (FeatureEdit(3, "add", 1.0, trigger=FeatureTrigger(4)), "spec.interventions[1].trigger"),
    ):
        with pytest.raises(InvalidSpec) as e:
            check_edits([FeatureEdit(1, "add", 1.0), edit], crosscoder, sites=sites)
        assert e.value.field == field and "crosscoder" in e.value.message


def test_coders_without_their_hooks_are_refused_naming_the_sae(transcoder, crosscoder):
    with pytest.raises(InvalidSpec) as e:
        steer_sites(transcoder, IN)
    assert e.value.field == "spec.sae" and "target_hook" in e.value.message
    with pytest.raises(InvalidSpec) as e:  # written before it is read: no causal pass can do that
        steer_sites(transcoder, OUT, target_hook=IN)
    assert e.value.field == "spec.sae" and "read before" in e.value.message
    with pytest.raises(InvalidSpec) as e:
        steer_sites(crosscoder, LAYERS[0], layer_hooks=LAYERS[:1], field="sae")
    assert e.value.field == "sae"
