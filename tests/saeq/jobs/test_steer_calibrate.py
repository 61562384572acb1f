"""Projection-capped steering and the calibrated strength, on a tiny Llama: cap lifts the projection
on the unit decoder direction to the cap and leaves the orthogonal part alone; calibration keeps the
smallest strength that reaches the concept within budget, chosen on prompts apart from those it is
scored on."""

from __future__ import annotations

import pytest
import torch

from saeq.errors import InvalidSpec
from saeq.jobs.steer import FeatureEdit, Steering, SteerSites, check_edits, generate
from saeq.jobs.steer_calibrate import Prompt, Target, calibrate, split_prompts
from saeq.ml.features import read_hook
from saeq.ml.sae import SparseAutoencoder
from saeq.specs.steer_calibrate import SteerCalibrate

HOOK = "blocks.1.hook_resid_post"
PROMPTS = [list(range(10 + 7 * i, 22 + 7 * i)) for i in range(6)]


@pytest.fixture(scope="module")
def sae():
    torch.manual_seed(0)
    sae = SparseAutoencoder(32, 128, "topk", k=8).eval()
    with torch.no_grad():
        sae.W_dec[5] *= 3.0  # a decoder row that is not unit norm: cap must use the unit direction
    return sae


def test_add_moves_the_stream_by_its_value_along_the_unit_row(tiny_llama, sae):
    """The k-sparse SAEs train free decoder rows: add's value is residual units along the unit
    row, whatever the row's norm (here 3x another row's)."""
    x = read_hook(tiny_llama, HOOK, torch.tensor([PROMPTS[0]])).view(1, len(PROMPTS[0]), -1)
    for f in (5, 6):
        with torch.no_grad():
            out = Steering(sae, [FeatureEdit(f, "add", 2.0)], len(PROMPTS[0]))(x)
            unit_D = sae.W_dec[f] / sae.W_dec[f].norm()
        torch.testing.assert_close(out - x, (2.0 * unit_D).expand_as(x), atol=1e-5, rtol=1e-5)


def test_cap_lifts_the_projection_to_the_cap_and_leaves_the_orthogonal_part(tiny_llama, sae):
    x = read_hook(tiny_llama, HOOK, torch.tensor([PROMPTS[0]])).view(1, len(PROMPTS[0]), -1)
    unit_D = sae.W_dec[5].detach() / sae.W_dec[5].detach().norm()
    before_T = x[0] @ unit_D
    cap = float(before_T.median())  # some tokens below the cap, some above
    with torch.no_grad():
        out = Steering(sae, [FeatureEdit(5, "cap", cap)], len(PROMPTS[0]))(x)[0]
    after_T = out @ unit_D
    below = before_T < cap
    assert below.any() and (~below).any()
    assert torch.allclose(after_T[below], torch.full_like(after_T[below], cap), atol=1e-5)
    assert torch.allclose(after_T[~below], before_T[~below], atol=1e-5)  # never lowered
    orthogonal_before = x[0] - before_T[:, None] * unit_D
    orthogonal_after = out - after_T[:, None] * unit_D
    assert (orthogonal_after - orthogonal_before).abs().max() < 1e-6 * max(1.0, float(x.abs().max()))


def test_cap_changes_a_generation_and_is_refused_for_a_coder(tiny_llama, sae):
    default = generate(tiny_llama, PROMPTS[0], max_new_tokens=8)
    capped = generate(
        tiny_llama, PROMPTS[0], max_new_tokens=8, hook=HOOK, sae=sae, edits=[FeatureEdit(5, "cap", 500.0)]
    )
    assert capped.token_ids != default.token_ids
    transcoder_sites = SteerSites(("blocks.1.ln2.hook_normalized",), ("blocks.1.hook_mlp_out",))
    with pytest.raises(InvalidSpec) as e:
        check_edits([FeatureEdit(5, "cap", 1.0)], sae, sites=transcoder_sites)
    assert e.value.field == "spec.interventions[0].mode"


def test_split_prompts_is_disjoint_seeded_and_keeps_two_a_side():
    fit, held = split_prompts(10, 0.5, seed=3)
    assert sorted(fit + held) == list(range(10)) and len(held) == 5
    assert split_prompts(10, 0.5, seed=3) == (fit, held) and split_prompts(10, 0.5, seed=4) != (fit, held)
    assert [len(s) for s in split_prompts(4, 0.8, seed=0)] == [2, 2]


def _changed_share(tiny_llama, prompts):
    """A concept measure the test controls: 1 for a completion unlike every default one, else 0."""
    defaults = {generate(tiny_llama, p, max_new_tokens=6).text for p in prompts}
    return lambda concept, texts: [float(t not in defaults) for t in texts]


def test_calibration_keeps_the_smallest_strength_that_moves_every_fit_prompt(tiny_llama, sae):
    prompts = [Prompt(f"p{i}", ids) for i, ids in enumerate(PROMPTS)]
    spec = SteerCalibrate(
        features=[5], mode="add", multiples=[1e-6, 1e-5, 0.3, 3.0, 30.0], concept_gain=0.99, max_kl=None
    )
    (cal,) = calibrate(
        tiny_llama, sae, HOOK, [Target(5, "the concept", 100.0)], prompts, spec,
        max_new_tokens=6, similarity=_changed_share(tiny_llama, PROMPTS), seed=1,
    )  # fmt: skip
    assert cal.met and cal.mode == "add"
    assert cal.sweep[-1].meets_concept and not any(p.meets_concept for p in cal.sweep[:-1])  # stops at the first
    assert cal.sweep[0].concept_gain == 0.0  # a negligible push changes nothing
    assert cal.value == pytest.approx(cal.multiple * 100.0) and cal.multiple == cal.sweep[-1].multiple
    assert set(cal.fit_prompts).isdisjoint(cal.held_out_prompts) and len(cal.held_out_prompts) == 3
    assert cal.baseline.mode == "clamp" and cal.baseline.value == pytest.approx(200.0)
    assert cal.calibrated.concept_gain.n == 3 and cal.calibrated.concept_gain.low <= cal.calibrated.concept_gain.high
    assert "concept_gain" in cal.calibrated_minus_baseline and cal.calibrated.steering_score is None


def test_calibration_over_budget_at_once_keeps_the_smallest_and_says_not_met(tiny_llama, sae):
    prompts = [Prompt(f"p{i}", ids) for i, ids in enumerate(PROMPTS[:4])]
    spec = SteerCalibrate(features=[5], mode="clamp", multiples=[30.0, 300.0], concept_gain=0.5, max_kl=1e-6)
    judged: list[int] = []

    def judge(concept, prompt_texts, texts):
        judged.append(len(texts))
        return [1.0] * len(texts)

    (cal,) = calibrate(
        tiny_llama, sae, HOOK, [Target(5, "c", 100.0)], prompts, spec,
        max_new_tokens=4, similarity=lambda c, texts: [0.0] * len(texts), judge=judge,
    )  # fmt: skip
    assert not cal.met and len(cal.sweep) == 1 and not cal.sweep[0].within_budget
    assert cal.multiple == 30.0 and cal.value == pytest.approx(3000.0)
    assert judged == [2, 2] and cal.calibrated.steering_score is not None
    assert cal.calibrated_minus_baseline["steering_score"].value == pytest.approx(0.0)


def test_the_calibrate_block_is_validated_naming_fields():
    with pytest.raises(ValueError, match="multiples"):
        SteerCalibrate(features=[1], multiples=[2.0, 1.0])
    from saeq.specs import SteerSpec

    base = {"sae": {"job_id": "a" * 32}, "prompts": ["a", "b", "c", "d"], "calibrate": {"features": [1]}}
    with pytest.raises(ValueError, match="label_job"):
        SteerSpec.model_validate(base)
    with pytest.raises(ValueError, match="prompts"):
        SteerSpec.model_validate(base | {"label_job": "b" * 32, "prompts": ["a", "b", "c"]})
    with pytest.raises(ValueError, match="interventions"):
        SteerSpec.model_validate({"sae": {"job_id": "a" * 32}, "prompts": ["a"]})
    assert SteerSpec.model_validate(base | {"label_job": "b" * 32}).calibrate is not None
