"""Spec errors as a Python user of the models sees them: a check across fields points at the field
to change, and numbers are finite."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from saeq.specs import JobCreate, SaeConfig, SteerRequest, TrainSpec

JOB = "0" * 32


def _loc(excinfo) -> tuple:
    return excinfo.value.errors()[0]["loc"]


def test_cross_field_errors_are_located_at_the_field():
    with pytest.raises(ValidationError) as e:
        TrainSpec(activations={"job_id": JOB}, saes=[SaeConfig(name="a"), {"name": "b"}, {"name": "a"}])
    assert _loc(e) == ("saes", 2, "name") and "duplicate name 'a'" in str(e.value)
    with pytest.raises(ValidationError) as e:
        JobCreate.model_validate(
            {"spec": {"kind": "train", "activations": {"job_id": JOB}, "saes": [{"architecture": "jumprelu", "k": 8}]}}
        )
    assert _loc(e) == ("spec", "train", "saes", 0, "k")
    with pytest.raises(ValidationError) as e:
        SteerRequest(sae={"source": "path", "path": "/sae"}, prompt="hi")
    assert _loc(e) == ("model",) and "an imported SAE needs model, hook" in str(e.value)


@pytest.mark.parametrize("value", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_numbers_are_refused(value):
    with pytest.raises(ValidationError) as e:
        JobCreate.model_validate(
            {"spec": {"kind": "train", "activations": {"job_id": JOB}, "sinks": {"norm_factor": value}}}
        )
    assert _loc(e) == ("spec", "train", "sinks", "norm_factor") and e.value.errors()[0]["type"] == "finite_number"
    with pytest.raises(ValidationError):
        JobCreate.model_validate({"spec": {"kind": "harvest"}, "time_limit_s": value})


def test_k_sparse_saes_train_free_decoder_rows_unless_asked_and_old_specs_keep_theirs():
    """The k-sparse SAEs default to free decoder rows started at norm 0.1 (docs/synthetic.md);
    the others keep unit rows; a spec stored before the switch says `normalize_decoder: true` and
    is re-read as it was trained."""
    for arch in ("topk", "batchtopk"):
        cfg = SaeConfig(architecture=arch)
        assert not cfg.keeps_unit_decoder() and cfg.initial_decoder_norm() == 0.1
    jumprelu = SaeConfig(architecture="jumprelu")
    assert jumprelu.keeps_unit_decoder() and jumprelu.initial_decoder_norm() == 1.0
    stored = SaeConfig.model_validate_json(SaeConfig(normalize_decoder=True).model_dump_json())
    assert stored.keeps_unit_decoder() and stored.initial_decoder_norm() == 1.0
    free_from_one = SaeConfig(normalize_decoder=False, decoder_init_norm=1.0)
    assert not free_from_one.keeps_unit_decoder() and free_from_one.initial_decoder_norm() == 1.0
    with pytest.raises(ValidationError, match="decoder_init_norm"):
        SaeConfig(decoder_init_norm=0.0)
