"""What each job kind publishes last: its manifest, typed. A reader gets the model of the kind it
asked for, or a clear InvalidSpec naming the job and the field; never a half-parsed dict.

Policy: the top level and the parts readers navigate (a harvest's hooks, a train job's SAEs and
harvest, a label job's index) are closed (`extra="forbid"`); provenance copied from elsewhere (the
spec, the model, the corpus, metrics, summaries) stays a plain JSON object, typed where it is made.
`format` is a version number; on disk it stays today's string `saeq.<kind>/<format>`, so every
manifest already in a store reads, and a worker writes the same JSON as before.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Discriminator, ValidationError, field_serializer, model_validator

from saeq.errors import InvalidSpec
from saeq.specs.compare import Comparison
from saeq.specs.estimates import Estimate
from saeq.specs.label import JudgeControl
from saeq.specs.label_bins import DensityBinScores

FORMAT = 1
"""The manifest format this code writes and the newest it reads."""

_FORMAT_NAME = re.compile(r"saeq\.(\w+)/(\d+)")


class _Closed(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class _Manifest(_Closed):
    format: int = FORMAT
    """Version of this kind's manifest; stored as `saeq.<kind>/<format>`."""
    kind: str
    job_id: str

    KIND: ClassVar[str]

    @model_validator(mode="before")
    @classmethod
    def _format_number(cls, data: Any) -> Any:
        """`saeq.<kind>/<n>` as written (the kind must be this model's) -> n."""
        if isinstance(data, dict) and isinstance(data.get("format"), str):
            version = _format_version(data["format"], cls.KIND)
            if version is None:
                raise ValueError(f"format {data['format']!r} is not saeq.{cls.KIND}/<n>")
            data = {**data, "format": version}
        return data

    @field_serializer("format")
    def _format_name(self, format: int) -> str:
        return f"saeq.{self.kind}/{format}"


class ShardEntry(_Closed):
    index: int
    n_tokens: int
    key: str
    size: int
    sha256: str


class HarvestHook(_Closed):
    """The activations stored at one hook point."""

    d_model: int
    dtype: Literal["float32", "bfloat16"]
    """Dtype of the shards' `acts` (the harvest spec's dtype); norms are float32 either way."""
    n_tokens: int
    shards: list[ShardEntry]
    sinks: dict[str, Any]
    """The sink rule and its counts (rule, median_norm, norm_factor, n_position_zero, ...)."""


class SyntheticTruthEntry(_Closed):
    """Where a synthetic harvest stored its ground truth (saeq.ml.synthetic_truth), and what made it."""

    key: str
    size: int
    sha256: str
    generator: dict[str, Any]
    """The generator's parameters (saeq.ml.synthetic.SyntheticConfig's fields)."""
    seed: int
    """The token stream's seed (the spec's `seed`); held-out rows for scoring come from another stream."""
    n_features: int
    expected_l0: float
    """Sum of the true features' firing probabilities: true features per token on average."""


class HarvestManifest(_Manifest):
    KIND: ClassVar[str] = "harvest"
    kind: Literal["harvest"] = "harvest"
    saeq_version: str
    created_at: float
    spec: dict[str, Any]
    model: dict[str, Any]
    """The model's provenance (name, revision, dtype, ...)."""
    d_model: int
    n_layers: int
    corpus: dict[str, Any]
    """The corpus spec, with `n_docs_used`."""
    context_len: int
    prepend_bos: bool
    dtype: str
    n_tokens: int
    n_contexts: int
    hooks: dict[str, HarvestHook]
    synthetic: SyntheticTruthEntry | None = None
    """A `source: synthetic` harvest's ground truth; None for a model's harvest."""


class HarvestReference(_Closed):
    """What a train job records of the harvest it read."""

    job_id: str
    hook: str
    model: dict[str, Any]
    context_len: int
    prepend_bos: bool
    corpus: dict[str, Any]
    sinks: dict[str, Any]


class TrainedSae(_Closed):
    d_in: int
    d_sae: int
    architecture: str
    saelens: str
    """Store prefix of the SAE in SAELens's format."""
    sparsify: str | None
    """Store prefix in sparsify's format (TopK SAEs only)."""
    metrics: dict[str, Any]


class TrainManifest(_Manifest):
    KIND: ClassVar[str] = "train"
    kind: Literal["train"] = "train"
    saeq_version: str
    created_at: float
    spec: dict[str, Any]
    harvest: HarvestReference
    saes: dict[str, TrainedSae]
    result: dict[str, Any]
    files: list[dict[str, Any]]


class EvaluateManifest(_Manifest):
    KIND: ClassVar[str] = "evaluate"
    kind: Literal["evaluate"] = "evaluate"
    created_at: float
    spec: dict[str, Any]
    metrics_version: str
    saeq_version: str
    saeq_git_commit: str | None
    model: dict[str, Any]
    hook: str
    sae: dict[str, Any]
    corpus: dict[str, Any]
    sink_rule: dict[str, Any] | None
    metrics: dict[str, Any]
    """saeq.specs.metrics names them; a value may be NaN (CE recovered with no loss gap)."""
    counts: dict[str, int]
    intervals: dict[str, Estimate] | None = None
    """Each metric's 95% interval with its n (bootstrap over contexts, Wilson over latents); None in
    manifests written before intervals were."""
    checks: dict[str, Any] | None
    report_key: str
    metrics_key: str
    plots: list[str]
    comparison: Comparison | None = None
    """With spec.compare_with: the evaluated SAE (A) against the other (B) on the same contexts."""
    splice: dict[str, Any] | None = None
    """What was spliced into the model: {kind: sae | transcoder | crosscoder, reads: [hooks the
    features are read from], replaces: [hooks its output replaced]}; None in manifests written before."""
    layers: dict[str, Any] | None = None
    """A crosscoder's: hooks, fvu_per_layer (on the evaluated tokens) and fvu_per_layer_intervals
    (Estimates, bootstrap over contexts), decoder_norm_shares and decoder_norm_mean
    (saeq.ml.sae.crosscoder.layer_report); None for one hook."""


class FeatureIndexEntry(_Closed):
    key: str
    n_contexts: int
    context_len: int
    n_ordinary_tokens: int
    n_sinks: int
    nnz: int


class LabelManifest(_Manifest):
    KIND: ClassVar[str] = "label"
    kind: Literal["label"] = "label"
    created_at: float
    spec: dict[str, Any]
    sae: dict[str, Any]
    model: dict[str, Any]
    hook: str
    corpus: dict[str, Any]
    prompt_version: str
    sink_rule: dict[str, Any] | None
    index: FeatureIndexEntry
    labels_key: str
    n_features: int
    summary: dict[str, Any]
    judge_controls: list[JudgeControl] | None = None
    """Each scorer's accuracy on control trials (saeq.jobs.label_controls), and whether its scores
    count; None in manifests written before the controls were."""
    density_bins: list[DensityBinScores] | None = None
    """Scores per firing-rate bin (spec.select's edges, else decades; saeq.jobs.label_bins); None in
    manifests written before they were."""
    browser: dict[str, Any] | None
    labelling_s: float
    carry: dict[str, Any] | None = None
    """With `spec.carry_from`: the other label job and SAE, the match method ('decoder+activations'
    or 'decoder only'), n_matched, n_stable, n_carried (saeq.jobs.label_carry.carry_summary)."""


class SteerManifest(_Manifest):
    KIND: ClassVar[str] = "steer"
    kind: Literal["steer"] = "steer"
    created_at: float
    spec: dict[str, Any]
    sae: dict[str, Any]
    model: dict[str, Any]
    hook: str
    completions_key: str
    n_completions: int
    summary: list[dict[str, Any]]
    calibration_key: str | None = None
    """With `spec.calibrate`: report/calibration.json, each feature's sweep, choice and held-out scores."""
    calibration: list[dict[str, Any]] | None = None
    """With `spec.calibrate`: per feature its label, label_job, mode, calibrated value, multiple of the
    max activation and whether it met the concept within budget (the chat endpoint's default)."""


Manifest = Annotated[
    HarvestManifest | TrainManifest | EvaluateManifest | LabelManifest | SteerManifest, Discriminator("kind")
]
MANIFESTS: dict[str, type[_Manifest]] = {
    m.KIND: m for m in (HarvestManifest, TrainManifest, EvaluateManifest, LabelManifest, SteerManifest)
}


def manifest_json(manifest: BaseModel) -> bytes:
    """The bytes a worker stores: the JSON it has always written (indent 1, NaN as `NaN`)."""
    return json.dumps(manifest.model_dump(), indent=1).encode()


M = TypeVar("M", bound=_Manifest)


def parse_manifest(data: bytes | dict, model: type[M], *, job_id: str, field: str) -> M:
    """The manifest of job `job_id` as `model` (its kind's); InvalidSpec at `field` when it is
    garbled, of another kind, of a newer format than this code reads, or missing or mistyping a field."""
    kind = model.KIND
    if isinstance(data, bytes | bytearray):
        try:
            data = json.loads(data)
        except ValueError as e:
            raise InvalidSpec(f"the manifest of job {job_id} is not JSON ({e})", field=field) from None
    if not isinstance(data, dict):
        raise InvalidSpec(f"the manifest of job {job_id} is not a JSON object", field=field)
    if data.get("kind") != kind:
        raise InvalidSpec(f"job {job_id} is a {data.get('kind')} job, not a {kind} job", field=field)
    version = _format_version(data.get("format"), kind)
    if version is None:
        raise InvalidSpec(
            f"the {kind} manifest of job {job_id} has format {data.get('format')!r}, not saeq.{kind}/<n>",
            field=field,
        )
    if version > FORMAT:
        raise InvalidSpec(
            f"the {kind} manifest of job {job_id} has format saeq.{kind}/{version}, newer than this "
            f"version of saeq reads (saeq.{kind}/{FORMAT}): upgrade the worker",
            field=field,
        )
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidSpec(
            f"the {kind} manifest of job {job_id} is not one this version of saeq reads: "
            f"{where}: {first['msg']}" + (f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""),
            field=field,
        ) from None


def _format_version(value: object, kind: str) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and (m := _FORMAT_NAME.fullmatch(value)) and m[1] == kind:
        return int(m[2])
    return None


__all__ = [
    "FORMAT",
    "MANIFESTS",
    "EvaluateManifest",
    "FeatureIndexEntry",
    "HarvestHook",
    "HarvestManifest",
    "HarvestReference",
    "LabelManifest",
    "Manifest",
    "ShardEntry",
    "SteerManifest",
    "SyntheticTruthEntry",
    "TrainManifest",
    "TrainedSae",
    "manifest_json",
    "parse_manifest",
]
