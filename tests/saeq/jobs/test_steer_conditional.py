"""Conditional steering on a tiny Llama with a planted trigger (issue 21, acceptance 3): an edit whose
trigger is a feature that fires on one token only changes the completions of prompts holding that
token, and leaves every other completion identical token for token."""

from __future__ import annotations

import pytest
import torch

from saeq.errors import InvalidSpec
from saeq.jobs.steer import FeatureEdit, FeatureTrigger, Steering, check_edits, generate
from saeq.specs.steer import Intervention
from tests.planted_trigger import HOOK, STEER, WATCH, absent_token, planted_trigger_sae

PROMPTS = [list(range(10, 22)), list(range(40, 49)), [7, 90, 33, 61, 5, 18, 77, 120]]
NEW = 10


@pytest.fixture(scope="module")
def planted(tiny_llama):
    """(token, sae, default completions of PROMPTS): the token in no prompt and no default completion."""
    defaults = [generate(tiny_llama, p, max_new_tokens=NEW) for p in PROMPTS]
    emb_VD = tiny_llama.model.get_input_embeddings().weight
    token = absent_token(emb_VD.shape[0], *PROMPTS, *(d.token_ids for d in defaults))
    return token, planted_trigger_sae(emb_VD, token), defaults


def _conditional(value: float = 40.0, threshold: float = 0.0) -> list[FeatureEdit]:
    return [FeatureEdit(STEER, "add", value, trigger=FeatureTrigger(WATCH, threshold))]


def test_a_conditional_edit_changes_only_the_completions_whose_prompt_holds_the_trigger(tiny_llama, planted):
    token, sae, defaults = planted
    for prompt, default in zip(PROMPTS, defaults, strict=True):
        plain = generate(tiny_llama, prompt, max_new_tokens=NEW, hook=HOOK, sae=sae, edits=_conditional())
        assert plain.token_ids == default.token_ids and plain.triggered_tokens == 0
        # The same edit without its trigger does move this prompt's completion: the edit is strong enough.
        always = [FeatureEdit(STEER, "add", 40.0)]
        assert generate(tiny_llama, prompt, max_new_tokens=NEW, hook=HOOK, sae=sae, edits=always).token_ids != (
            default.token_ids
        )
        with_token = prompt[:3] + [token] + prompt[3:]
        default_t = generate(tiny_llama, with_token, max_new_tokens=NEW)
        steered_t = generate(tiny_llama, with_token, max_new_tokens=NEW, hook=HOOK, sae=sae, edits=_conditional())
        assert steered_t.token_ids != default_t.token_ids
        assert steered_t.triggered_tokens == 1  # the planted token alone, in the prompt
        # Above the trigger's activation there, the condition never holds: no change.
        high = _conditional(threshold=1e5)
        assert generate(tiny_llama, with_token, max_new_tokens=NEW, hook=HOOK, sae=sae, edits=high).token_ids == (
            default_t.token_ids
        )


def test_triggers_are_read_before_the_edits_of_their_token(tiny_llama, planted):
    """Ablating the trigger feature at its token does not cancel another edit it triggers, in either
    order: every edit reads the activations as they came in."""
    token, sae, _ = planted
    x = tiny_llama.model.get_input_embeddings().weight[[5, token, 9]][None]  # (1, 3, D)
    ablate = FeatureEdit(WATCH, "ablate", trigger=FeatureTrigger(WATCH))
    with torch.no_grad():
        a_watch = sae.encode(x[0])[:, WATCH]
        expected = x[0] - a_watch[:, None] * sae.W_dec[WATCH] + (a_watch > 0)[:, None] * 40.0 * sae.W_dec[STEER]
        for edits in ([ablate, *_conditional()], [*_conditional(), ablate]):
            out = Steering(sae, edits, prompt_len=3)(x)
            assert torch.allclose(out[0], expected, atol=1e-5)
            assert torch.equal(out[0, [0, 2]], x[0, [0, 2]])  # the tokens without the trigger are untouched


def test_a_trigger_outside_the_sae_or_not_finite_is_refused_naming_the_field(planted):
    _, sae, _ = planted
    with pytest.raises(InvalidSpec) as e:
        check_edits([FeatureEdit(STEER, "add", 1.0, trigger=FeatureTrigger(sae.d_sae))], sae)
    assert e.value.field == "spec.interventions[0].trigger.feature" and f"0..{sae.d_sae - 1}" in e.value.message
    for bad in ({"feature": -1}, {"feature": 0, "threshold": float("nan")}, {"feature": 0, "above": 1.0}):
        with pytest.raises(ValueError, match="trigger"):
            Intervention.model_validate({"feature": 1, "value": 4.0, "trigger": bad})
    trigger = Intervention.model_validate({"feature": 1, "trigger": {"feature": 0}}).trigger
    assert trigger is not None and trigger.threshold == 0.0
