"""The evaluate spec's transcoder and crosscoder fields: a crosscoder's hooks name its first as the
hook, and what contradicts them is refused naming the field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from saeq.specs import EvaluateSpec

JOB = {"job_id": "0" * 32}
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


def test_a_crosscoders_hooks_give_the_hook_and_contradictions_name_the_field():
    spec = EvaluateSpec.model_validate({"sae": JOB, "hooks": HOOKS})
    assert spec.hook == HOOKS[0] and spec.hooks == tuple(HOOKS) and spec.target_hook is None
    bad = [
        ({"hooks": [HOOKS[0], HOOKS[0]]}, "hooks"),
        ({"hooks": HOOKS, "hook": HOOKS[1]}, "hook"),
        ({"hooks": HOOKS, "target_hook": "blocks.0.hook_mlp_out"}, "target_hook"),
        ({"hooks": HOOKS[:1]}, "hooks"),
        ({"target_hook": "blocks.0.hook_mlp"}, "target_hook"),
    ]
    for extra, field in bad:
        with pytest.raises(ValidationError) as e:
            EvaluateSpec.model_validate({"sae": JOB, **extra})
        assert e.value.errors()[0]["loc"][0] == field, (extra, e.value.errors())


def test_a_transcoders_target_hook_is_kept():
    spec = EvaluateSpec.model_validate({"sae": JOB, "target_hook": "blocks.1.hook_mlp_out"})
    assert spec.target_hook == "blocks.1.hook_mlp_out" and spec.hooks is None
