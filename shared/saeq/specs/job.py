"""The union of job specs over `kind`, the body of `POST /v1/jobs`, and re-reading a stored spec."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from saeq.specs.common import Frozen
from saeq.specs.evaluate import EvaluateSpec
from saeq.specs.harvest import HarvestSpec
from saeq.specs.label import LabelSpec
from saeq.specs.steer import SteerSpec
from saeq.specs.train import TrainSpec

JobSpec = Annotated[HarvestSpec | TrainSpec | LabelSpec | EvaluateSpec | SteerSpec, Field(discriminator="kind")]
JOB_KINDS = ("harvest", "train", "label", "evaluate", "steer")
IMPLEMENTED_KINDS = JOB_KINDS


class JobCreate(Frozen):
    """Body of `POST /v1/jobs`."""

    spec: JobSpec
    depends_on: list[str] = Field(default=[], max_length=32)
    """Ids of jobs that must succeed before this one starts."""
    name: str | None = Field(default=None, max_length=200)
    """Free text shown in listings."""
    priority: int = Field(default=0, ge=0, le=9)
    """Among its team's jobs waiting for a slot (quota max_running), higher starts first."""
    time_limit_s: float | None = Field(default=None, gt=0)
    """Stop the job (failed, code `time_limit`) once it has run this long since it first started;
    None: the team's max_time_s."""


def parse_spec(data: dict) -> HarvestSpec | TrainSpec | LabelSpec | EvaluateSpec | SteerSpec:
    """Re-read a stored spec with the same class that validated it at the API edge."""
    from pydantic import TypeAdapter

    return TypeAdapter(JobSpec).validate_python(data)
