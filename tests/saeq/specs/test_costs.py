"""The cost rules of saeq.specs.costs on their own: what the demo's jobs cost under the default quota, and
the rules the worker applies again once it knows d_in."""

from __future__ import annotations

import pytest

from saeq.errors import InvalidSpec
from saeq.platform.teams import TeamQuota
from saeq.specs import EvaluateSpec, HarvestSpec, LabelSpec, SaeConfig, TrainSpec
from saeq.specs.costs import OverQuota, check_quota, job_cost

HOOK = "blocks.14.hook_resid_post"
JOB = "0" * 32


def test_the_demos_jobs_cost_well_under_the_default_quota():
    demo = [
        HarvestSpec(hooks=[HOOK], max_tokens=262_144),
        TrainSpec(activations={"job_id": JOB}, total_tokens=2_457_600, saes=[SaeConfig(expansion_factor=8)]),
        LabelSpec(sae={"job_id": JOB}, select={"per_bin": 8}, index_tokens=65_536, n_score_examples=8),
        EvaluateSpec(sae={"job_id": JOB}, checks={"label_job": JOB}),
    ]
    # label: 65,536 index tokens + 32 labels x 24 tokens x 200 + 32 x 24 judge questions x 256;
    # evaluate: 16,384 tokens x 3 + 3 checks x 1,024 articles x 128 tokens + 256 x 3 languages x 128
    assert [job_cost(s, d_in=576).units for s in demo] == [262_144, 691_200, 415_744, 540_672]
    for spec in demo:
        check_quota(spec, TeamQuota(), team="demo", d_in=576)
    # 8 features from each of 4 density decades cost what the 32 most active did
    most_active = LabelSpec(sae={"job_id": JOB}, n_most_active=32, index_tokens=65_536, n_score_examples=8)
    assert job_cost(most_active).units == 415_744


def test_a_label_job_of_every_feature_counts_its_saes_width():
    every = LabelSpec(
        sae={"job_id": JOB},
        n_most_active=None,
        index_tokens=4096,
        judge=None,
        scorers=["embedding"],
        explainers=[{"backend": "local"}],
    )
    assert job_cost(every) is None  # how many features is unknown
    assert job_cost(every, n_features=1000).units == 4096 + 1000 * 24 * 200
    with pytest.raises(OverQuota) as e:  # unknown width: the widest SAE the team may train
        check_quota(every, TeamQuota(max_latents=1 << 20), team="t")
    assert e.value.field == "spec.n_most_active" and "1,048,576 features" in e.value.message


def test_widths_unknown_until_d_in_are_checked_when_it_is():
    quota = TeamQuota(max_latents=1000)
    two = TrainSpec(activations={"job_id": JOB}, saes=[SaeConfig(name="a", k=4), SaeConfig(name="b", d_sae=600)])
    assert job_cost(two) is None  # 8 x d_in latents for "a": unknown at submit
    check_quota(two, quota, team="t")  # 600 known latents fit
    with pytest.raises(OverQuota) as e:
        check_quota(two, quota, team="t", d_in=64)  # 512 + 600
    assert isinstance(e.value, InvalidSpec) and e.value.field == "spec.saes" and "1,112 latents" in e.value.message
    with pytest.raises(OverQuota) as e:
        check_quota(two, quota, team="t", d_in=128)  # "a" alone: 1,024
    assert e.value.field == "spec.saes.0.expansion_factor"


def test_the_absorption_check_counts_its_prompts():
    """Its word prompts go through the model too: a quota sees them (26 x 128 words x 5 examples x 6)."""
    plain = EvaluateSpec(sae={"job_id": JOB}, checks={"label_job": JOB})
    with_absorption = EvaluateSpec(sae={"job_id": JOB}, checks={"label_job": JOB, "absorption": {}})
    extra = job_cost(with_absorption, d_in=576).units - job_cost(plain, d_in=576).units
    assert extra == 26 * 128 * 5 * 6
    fewer = EvaluateSpec(sae={"job_id": JOB}, checks={"label_job": JOB, "absorption": {"letters": "ab"}})
    assert job_cost(fewer, d_in=576).units - job_cost(plain, d_in=576).units == 2 * 128 * 5 * 6
