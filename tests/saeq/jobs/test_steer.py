"""Steering on a tiny Llama: edits that keep the SAE's error term change nothing but the chosen
feature, positions are respected across KV-cached steps, and side effects are measured."""

from __future__ import annotations

import pytest
import torch

from saeq.errors import InvalidSpec
from saeq.jobs.steer import FeatureEdit, Steering, check_edits, generate, side_effects
from saeq.ml.features import read_hook
from saeq.ml.sae import SparseAutoencoder

HOOK = "blocks.1.hook_resid_post"
PROMPT = list(range(10, 26))


@pytest.fixture(scope="module")
def sae():
    torch.manual_seed(0)
    return SparseAutoencoder(32, 128, "topk", k=8).eval()


def _active_and_silent(lm, sae):
    with torch.no_grad():
        acts = sae.encode(read_hook(lm, HOOK, torch.tensor([PROMPT])))
    fired = (acts > 0).sum(0)
    return int(fired.argmax()), int((fired == 0).nonzero()[0])


def test_edits_that_keep_the_error_term_reproduce_the_default_generation_exactly(tiny_llama, sae):
    active, silent = _active_and_silent(tiny_llama, sae)
    default = generate(tiny_llama, PROMPT, max_new_tokens=12)
    for edit in (FeatureEdit(active, "scale", 1.0), FeatureEdit(silent, "clamp", 0.0), FeatureEdit(silent, "ablate")):
        steered = generate(tiny_llama, PROMPT, max_new_tokens=12, hook=HOOK, sae=sae, edits=[edit])
        assert steered.token_ids == default.token_ids, edit
        fx = side_effects(tiny_llama, PROMPT, steered, hook=HOOK, sae=sae, edits=[edit])
        assert fx.kl_from_default == pytest.approx(0.0, abs=1e-6)


def test_a_clamp_moves_the_stream_along_that_feature_only(tiny_llama, sae):
    active, _ = _active_and_silent(tiny_llama, sae)
    x = read_hook(tiny_llama, HOOK, torch.tensor([PROMPT])).view(1, len(PROMPT), -1)
    with torch.no_grad():
        a_f = sae.encode(x[0])[:, active]
        out = Steering(sae, [FeatureEdit(active, "clamp", 5.0)], len(PROMPT))(x)
    expected = x[0] + (5.0 - a_f)[:, None] * sae.W_dec[active]
    assert torch.allclose(out[0], expected, atol=1e-5)


def test_positions_prompt_and_generated(tiny_llama, sae):
    x = read_hook(tiny_llama, HOOK, torch.tensor([PROMPT])).view(1, len(PROMPT), -1)
    step = x[:, -1:]
    for positions, changes_prompt, changes_step in (
        ("prompt", True, False),
        ("generated", False, True),
        ("all", True, True),
    ):
        s = Steering(sae, [FeatureEdit(3, "add", 4.0, positions)], len(PROMPT))
        with torch.no_grad():
            assert (not torch.equal(s(x), x)) == changes_prompt
            assert (not torch.equal(s(step), step)) == changes_step  # the first generated token


def test_a_strong_addition_changes_the_text_and_is_measured(tiny_llama, sae):
    default = generate(tiny_llama, PROMPT, max_new_tokens=12)
    edit = [FeatureEdit(0, "add", 50.0)]
    steered = generate(tiny_llama, PROMPT, max_new_tokens=12, hook=HOOK, sae=sae, edits=edit)
    assert steered.token_ids != default.token_ids
    fx = side_effects(tiny_llama, PROMPT, steered, hook=HOOK, sae=sae, edits=edit)
    assert fx.kl_from_default > 1e-3 and fx.perplexity_unsteered > 1  # a random tiny model is nearly uniform
    # each with its 95% interval over the 12 generated tokens, around the figure itself
    kl, ppl = fx.intervals["kl_from_default"], fx.intervals["perplexity_unsteered"]
    assert kl.n == ppl.n == 12 and kl.unit == "generated tokens"
    assert kl.value == fx.kl_from_default and kl.low < kl.value < kl.high
    assert ppl.value == fx.perplexity_unsteered and 1 < ppl.low < ppl.value < ppl.high


def test_a_feature_outside_the_sae_is_refused_naming_the_field(sae):
    with pytest.raises(InvalidSpec) as e:
        check_edits([FeatureEdit(3, "add", 1.0), FeatureEdit(128, "add", 1.0)], sae)
    assert e.value.field == "spec.interventions[1].feature" and "0..127" in e.value.message


def test_chat_prompts_use_the_tokenizers_template(tiny_llama):
    import copy

    from saeq.jobs.steer import chat_prompt
    from saeq.ml.models import LoadedModel

    tok = copy.deepcopy(tiny_llama.tokenizer)
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"
    lm = LoadedModel(tiny_llama.model, tok, tiny_llama.d_model, tiny_llama.n_layers)
    ids = chat_prompt(lm, [{"role": "user", "content": "Hi there"}])
    assert all(isinstance(i, int) for i in ids) and tok.decode(ids) == "<user>Hi there<assistant>"
