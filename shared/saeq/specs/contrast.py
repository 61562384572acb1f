"""Contrastive search (`POST /v1/features/contrast`): two sets of texts -> the SAE's features whose
per-text activation separates them best, chosen on one half of each set and scored on the other
half (detection AUROC and Cohen's d with 95% intervals), answered by a live worker."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from saeq.specs.common import Frozen, HookName, ModelSpec, SaeRef, SinkRule, _require_for_imported, invalid
from saeq.specs.estimates import Estimate

MAX_TEXTS = 128
"""Inline texts per set."""
MAX_DOCS = 256
"""Corpus documents per set."""
MAX_TOTAL_TOKENS = 65_536
"""Tokens read over both sets (after `max_tokens` cuts each text): a live request stays seconds long."""


class TextSet(Frozen):
    """One side of a contrast: inline texts, or a builtin corpus's documents of one topic."""

    texts: list[Annotated[str, Field(min_length=1, max_length=8000)]] | None = Field(
        default=None, min_length=4, max_length=MAX_TEXTS
    )
    """The texts, each read as it is (no chat template, no BOS added)."""
    corpus: Literal["wiki-en", "wiki-fr", "wiki-es"] | None = None
    """A builtin corpus (saeq.ml.corpus) instead of `texts`: its documents' extracts."""
    topic: str | None = Field(default=None, min_length=1, max_length=200)
    """With `corpus`: only documents of this topic (e.g. "Physical sciences", "People"); None: any."""
    max_docs: int = Field(default=64, ge=4, le=MAX_DOCS)
    """With `corpus`: the first this many matching documents in the corpus's seeded order."""

    @model_validator(mode="after")
    def _one_source(self) -> TextSet:
        if (self.texts is None) == (self.corpus is None):
            raise invalid(self, "texts" if self.texts is None else "corpus", "give exactly one of texts and corpus")
        if self.topic is not None and self.corpus is None:
            raise invalid(self, "topic", "a topic selects documents of a corpus: give corpus too")
        return self


class ContrastRequest(Frozen):
    """Body of `POST /v1/features/contrast`: which features of an SAE separate the texts of `a` from
    those of `b`."""

    sae: SaeRef
    model: ModelSpec | None = None
    """None: the model the SAE's harvest read (required for an imported SAE)."""
    hook: HookName | None = None
    """None: the hook point the SAE was trained on (required for an imported SAE)."""
    a: TextSet
    b: TextSet
    top_k: int = Field(default=10, ge=1, le=64)
    """Features reported in each direction (higher on a; higher on b)."""
    aggregate: Literal["max", "mean"] = "max"
    """A text's activation of a feature: its max, or its mean, over the text's ordinary tokens."""
    max_tokens: int = Field(default=128, ge=8, le=512)
    """Each text is cut to its first this many tokens."""
    held_out: float = Field(default=0.5, ge=0.2, le=0.8)
    """The share of each set kept apart: features are chosen on the rest, scored on this part."""
    seed: int = Field(default=0, ge=0)
    """Seeds the split, the corpus order and the bootstrap."""
    label_job: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    """A label job of this SAE whose labels name the features; None: the newest succeeded one of the
    caller's team, if any."""
    sinks: SinkRule = SinkRule()
    """The attention-sink rule, on by default as in training: sinks count in no text's activation."""

    @model_validator(mode="after")
    def _consistent(self) -> ContrastRequest:
        _require_for_imported(self, ("model", "hook"))
        return self


class ContrastFeature(Frozen):
    """One feature that separates the sets, in its own direction: `auroc` > 0.5 means it detects
    texts of the set it is higher on."""

    feature: int
    higher_on: Literal["a", "b"]
    selection_auroc: float
    """Detection AUROC on the selection half (where it was chosen: biased upwards by the choice)."""
    held_out_auroc: Estimate
    """Detection AUROC on the held-out texts, 95% bootstrap interval over those texts."""
    held_out_cohens_d: Estimate | None
    """Cohen's d (pooled SD) on the held-out texts, sign in its own direction; None when the feature
    is constant over them."""
    mean_a: float
    """Mean per-text activation over the held-out texts of a."""
    mean_b: float
    label: str | None = None
    link: str | None = None
    """The feature's page in the browser (None: the label job published no pages)."""


class ContrastResult(Frozen):
    """Answer of `POST /v1/features/contrast`."""

    sae: dict[str, Any]
    model: str
    hook: str
    label_job: str | None
    sink_rule: dict[str, float] | None
    aggregate: Literal["max", "mean"]
    n_texts: dict[str, int]
    """Texts per set, {"a": ..., "b": ...}."""
    n_held_out: dict[str, int]
    """Of those, kept apart for scoring."""
    n_tokens: int
    """Tokens read over both sets, after the cut."""
    n_cut: int
    """Texts cut at `max_tokens`."""
    higher_on_a: list[ContrastFeature]
    """Best first (highest selection AUROC for a)."""
    higher_on_b: list[ContrastFeature]
    seconds: float
