"""The label spec: explainers and judges that name an SAE's features and score the names."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Tag, model_validator

from saeq.specs.common import (
    CorpusSpec,
    Frozen,
    HookName,
    ModelSpec,
    SaeRef,
    Seed,
    SinkRule,
    _backend_tag,
    _require_for_imported,
    invalid,
)
from saeq.specs.estimates import Estimate


class LocalLLM(Frozen):
    """A Hugging Face causal LM run on the worker, prompted few-shot (FIELD-NOTES: SmolLM2-135M
    is a weak but honest offline fallback)."""

    backend: Literal["local"] = "local"
    model: ModelSpec = ModelSpec()
    max_new_tokens: int = Field(default=24, ge=4, le=256)
    """Tokens generated per label."""


ENDPOINT_NAME = r"^[a-z0-9][a-z0-9_-]{0,63}$"
"""An LLM endpoint's name in the deployment's `llm_endpoints` setting and in specs."""


class EndpointLLM(Frozen):
    """An OpenAI-compatible chat endpoint (vLLM, a hosted API) that the deployment names.

    A spec carries the name only: the URL and the key's variable are the deployment's
    `SAEQ_LLM_ENDPOINTS` setting, so a job cannot send requests, or a key, anywhere else."""

    backend: Literal["openai"]
    endpoint: str = Field(pattern=ENDPOINT_NAME)
    """Name of an endpoint in the deployment's `llm_endpoints` setting, e.g. `vllm`; a submit
    naming another one is refused with the list of names allowed."""
    model: str = Field(min_length=1, max_length=200)
    timeout_s: float = Field(default=60.0, gt=0.0, le=600.0)
    max_retries: int = Field(default=2, ge=0, le=10)
    """Retries on rate limits, 5xx and connection errors, with backoff."""
    token_budget: int | None = Field(default=2_000_000, gt=0)
    """Stop (failed job, responses cached) once the endpoint has used this many tokens."""
    max_concurrency: int = Field(default=4, ge=1, le=64)
    max_new_tokens: int = Field(default=80, ge=4, le=2048)


class MetadataLabeller(Frozen):
    """No LLM: name a feature from the corpus metadata (titles, topics) of its top contexts."""

    backend: Literal["metadata"]


ExplainerSpec = Annotated[
    Annotated[LocalLLM, Tag("local")]
    | Annotated[EndpointLLM, Tag("openai")]
    | Annotated[MetadataLabeller, Tag("metadata")],
    _backend_tag("local"),
]
JudgeSpec = Annotated[Annotated[LocalLLM, Tag("local")] | Annotated[EndpointLLM, Tag("openai")], _backend_tag("local")]
Scorer = Literal["detection", "fuzzing", "embedding"]

DENSITY_DECADES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
"""Firing-rate edges by decade: the bins a label job reports its scores in unless `select` names others."""


class DensityBins(Frozen):
    """Label features drawn at random from firing-rate bins (as delphi and Anthropic sample them),
    not only the densest: the most active features fire on 5-40% of tokens and are the least
    monosemantic. A feature's density is the fraction of the label index's ordinary tokens it fires on."""

    by: Literal["density_bins"] = "density_bins"
    edges: list[Annotated[float, Field(gt=0.0, le=1.0)]] = Field(
        default=list(DENSITY_DECADES), min_length=2, max_length=33
    )
    """Ascending firing-rate edges, log-spaced as a rule: bin i holds densities in
    [edges[i], edges[i+1]), the last bin its upper edge too."""
    per_bin: int = Field(default=16, ge=1, le=100_000)
    """Features drawn from each bin (every eligible one when the bin has fewer)."""
    seed: Seed = 0
    """Seeds the draw within each bin."""

    @model_validator(mode="after")
    def _ascending(self) -> DensityBins:
        if any(hi <= lo for lo, hi in zip(self.edges, self.edges[1:], strict=False)):
            raise invalid(self, "edges", f"edges must increase strictly, got {self.edges}")
        return self

    @property
    def max_features(self) -> int:
        return (len(self.edges) - 1) * self.per_bin


class CarryFrom(Frozen):
    """Carry another label job's labels over to this SAE's matching features (a checkpoint or a
    retrain of the same config; saeq.jobs.label_carry): features matched on decoder cosine, confirmed
    on activation correlation where both indexes hold the same tokens. Carried labels are marked
    `carried_from`, beside this job's own; they are not scored."""

    label_job: str = Field(pattern=r"^[0-9a-f]{32}$")
    """A finished label job of an SAE with this one's d_in (list it in depends_on to wait for it)."""
    min_cosine: float = Field(default=0.7, ge=0.0, le=1.0)
    """A match is stable when the decoder directions' cosine is at least this..."""
    min_correlation: float = Field(default=0.5, ge=-1.0, le=1.0)
    """...and, where measured, the activations' Pearson correlation at least this."""


class LabelSpec(Frozen):
    """Index an SAE's features on held-out text, label them, and score each label."""

    kind: Literal["label"] = "label"
    sae: SaeRef
    model: ModelSpec | None = None
    """None: the model the SAE's harvest read (required for an imported SAE)."""
    hook: HookName | None = None
    """None: the hook point the SAE was trained on (required for an imported SAE)."""
    corpus: CorpusSpec | None = None
    """None: documents of the harvest's corpus that neither harvest nor training saw."""
    context_len: int | None = Field(default=None, ge=8, le=32_768)
    """None: the harvest's context length."""
    index_tokens: int = Field(default=131_072, gt=0, le=100_000_000)
    """Held-out tokens in the feature index (rounded up to whole contexts)."""
    batch_size: int = Field(default=16, ge=1, le=1024)
    """Contexts per forward pass while indexing."""
    features: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, max_length=1_000_000)
    """Which features to label; None: those `select` draws, else the `n_most_active` most active
    (or all, when that is None)."""
    select: DensityBins | None = None
    """Draw the features to label across density bins; None: the most active ones."""
    n_most_active: int | None = Field(default=64, gt=0)
    """When `features` is None: label the N features that fire most often; None: every feature
    that fires at least `min_activating` times."""
    min_activating: int = Field(default=4, ge=1)
    """A feature needs this many activating contexts to be labelled and scored."""
    explainers: list[ExplainerSpec] = Field(
        default=[LocalLLM(), MetadataLabeller(backend="metadata")], min_length=1, max_length=4
    )
    """Each writes its own label for every feature."""
    judge: JudgeSpec | None = LocalLLM()
    """The LLM that answers the detection and fuzzing questions; None: embedding scoring only."""
    scorers: list[Scorer] = Field(default=["detection", "fuzzing", "embedding"], max_length=3)
    n_explain_examples: int = Field(default=10, ge=1, le=100)
    """Top-activating windows shown to an explainer."""
    n_score_examples: int = Field(default=10, ge=2, le=200)
    """Activating windows per scorer (from activation quantiles, none shown to the explainer);
    as many silent windows are added."""
    window_before: int = Field(default=12, ge=0, le=256)
    """Tokens shown before a window's peak."""
    window_after: int = Field(default=4, ge=0, le=256)
    sinks: SinkRule = SinkRule()
    seed: Seed = 0
    """Seeds the choice of scoring windows (and the document order of a builtin corpus)."""
    carry_from: CarryFrom | None = None
    """Carry another label job's labels to the matching features; None: no carry."""
    browser: bool = True
    """Publish the feature browser's list and pages for every feature (about 7 KB and 5 ms per
    feature; docs/browser.md)."""

    @model_validator(mode="after")
    def _consistent(self) -> LabelSpec:
        _require_for_imported(self, ("model", "hook", "corpus"))
        if self.judge is None and {"detection", "fuzzing"} & set(self.scorers):
            raise invalid(self, "scorers", "detection and fuzzing scorers need a judge")
        if len(set(self.scorers)) != len(self.scorers):
            raise invalid(self, "scorers", "scorers: listed twice")
        if self.select is not None and self.features is not None:
            raise invalid(self, "select", "give `features` or `select`, not both")
        if self.select is not None and self.n_most_active not in (
            None,
            type(self).model_fields["n_most_active"].default,
        ):
            raise invalid(
                self, "n_most_active", "n_most_active chooses the most active features; with `select`, leave it out"
            )
        return self

    @property
    def max_features(self) -> int | None:
        """The most features this job labels; None: every feature that fires often enough."""
        if self.features is not None:
            return len(self.features)
        return self.select.max_features if self.select is not None else self.n_most_active


class LabelSearch(Frozen):
    """Body of `POST /v1/labels/search`: features whose labels mean what `query` says."""

    label_job: str = Field(pattern=r"^[0-9a-f]{32}$")
    query: str = Field(min_length=1, max_length=1000)
    top: int = Field(default=10, ge=1, le=200)


JUDGE_UNCALIBRATED = "judge uncalibrated: scores uninformative"
"""The flag on a scorer whose control accuracy is not shown to beat chance."""
ControlKind = Literal["own_vs_other", "planted"]


class JudgeControl(BaseModel):
    """A scorer's own accuracy on control trials whose answers are known (saeq.jobs.label_controls):
    a feature's label against that feature's windows (fits) and another feature's (does not), and a
    planted label, `the word "X"`, against windows that contain the word and windows that do not."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scorer: Scorer | Literal["specificity"]
    """Which scores these controls vouch for (or not): a label job's scorer, or the specificity
    check's rater."""
    judge: str
    """The judge (`local:<model>`, `openai:<model>`) or the embedding model."""
    accuracy: Estimate
    """Share of control trials answered right, Wilson 95% interval; n counts trials."""
    by_kind: dict[ControlKind, Estimate]
    """The same per kind of trial."""
    chance: float = 0.5
    """Accuracy of a judge that cannot tell (every trial's two answers are equally many)."""
    calibrated: bool
    """True when the whole interval lies above chance: the scorer's scores count."""
    flag: str | None
    """JUDGE_UNCALIBRATED (and why) when not calibrated; its scores are left out of the summary."""


class LabelScore(BaseModel):
    """One scorer's score of one label, as a labels.jsonl record holds it under `scores`."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    accuracy: float | None = None
    """Share of windows the judge answered right at P(yes) > 0.5; None for the embedding scorer."""
    balanced_accuracy: float | None = None
    """Mean of the two classes' recalls (0.5 is chance); None for the embedding scorer."""
    auc: float | None = None
    """ROC AUC of activating against silent windows (0.5 is chance)."""
    n: int = 0
    """Windows scored."""
    intervals: dict[str, Estimate] = {}
    """95% intervals of `balanced_accuracy` and `auc` over the windows (saeq.ml.scoring); empty in
    records written before they were, or where a class had too few windows."""
