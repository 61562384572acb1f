"""The harvest spec's synthetic source: defaults, round trip, and every refusal naming its field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from saeq.specs import BuiltinCorpus, HarvestSpec, ModelSpec, SyntheticActivations


def _located(**fields) -> tuple[tuple, str]:
    with pytest.raises(ValidationError) as e:
        HarvestSpec.model_validate(fields)
    first = e.value.errors()[0]
    return first["loc"], first["msg"]


def test_a_synthetic_source_takes_its_generator_defaults_and_round_trips():
    spec = HarvestSpec(source="synthetic", max_tokens=40_000, shard_tokens=16_384)
    assert spec.synthetic == SyntheticActivations() and spec.max_shards == 3  # 16,384 + 16,384 + 7,232 rows
    assert HarvestSpec.model_validate(spec.model_dump(mode="json")) == spec  # a stored spec reads back
    assert HarvestSpec().source == "model" and HarvestSpec().synthetic is None


@pytest.mark.parametrize(
    ("fields", "loc", "says"),
    [
        ({"synthetic": {}}, ("synthetic",), "source: synthetic"),
        ({"source": "synthetic", "model": ModelSpec(name="gpt2").model_dump()}, ("model",), "runs no model"),
        ({"source": "synthetic", "corpus": BuiltinCorpus(max_docs=3).model_dump()}, ("corpus",), "runs no model"),
        ({"source": "synthetic", "context_len": 64}, ("context_len",), "runs no model"),
        ({"source": "synthetic", "slices": 2, "max_tokens": 1 << 20}, ("slices",), "runs no model"),
        (
            {"source": "synthetic", "hooks": ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]},
            ("hooks",),
            "one hook",
        ),
        ({"source": "synthetic", "synthetic": {"min_prob": 0.5, "max_prob": 0.1}}, ("synthetic", "min_prob"), "0.1"),
        (
            {"source": "synthetic", "synthetic": {"n_features": 16, "n_parents": 4, "n_children": 4}},
            ("synthetic", "n_parents"),
            "leaves 12",
        ),
        (
            {"source": "synthetic", "synthetic": {"n_features": 16, "n_groups": 3, "group_size": 8}},
            ("synthetic", "n_groups"),
            "need 24",
        ),
        (
            {"source": "synthetic", "synthetic": {"n_features": 65_536, "d_model": 4096}},
            ("synthetic", "n_features"),
            "exceeds",
        ),
        ({"source": "synthetic", "synthetic": {"d_model": 1}}, ("synthetic", "d_model"), "greater than or equal"),
        ({"source": "synthetic", "synthetic": {"group_correlation": 1.0}}, ("synthetic", "group_correlation"), ""),
        ({"source": "synthetic", "synthetic": {"n_feature": 8}}, ("synthetic", "n_feature"), "Extra inputs"),
        ({"source": "simulated"}, ("source",), "'model' or 'synthetic'"),
    ],
)
def test_bad_synthetic_fields_are_refused_naming_the_field(fields, loc, says):
    where, message = _located(**fields)
    assert where == loc and says in message, (where, message)
