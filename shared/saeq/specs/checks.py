"""The seed's checks (specificity, sensitivity, completeness, probing) and first-letter absorption, run
by an evaluate job."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, Tag, field_validator

from saeq.specs.common import Frozen, _backend_tag
from saeq.specs.label import EndpointLLM, LocalLLM


class EmbeddingRater(Frozen):
    """MiniLM similarity between the label and the text, cut into the 0-3 scale (docs/checks.md)."""

    backend: Literal["embedding"]


RaterSpec = Annotated[
    Annotated[LocalLLM, Tag("local")]
    | Annotated[EndpointLLM, Tag("openai")]
    | Annotated[EmbeddingRater, Tag("embedding")],
    _backend_tag("embedding"),
]


class SpecificityCheck(Frozen):
    """A judge rates contexts sampled across each labelled feature's activation range, zero
    included, on the 0-3 scale of Scaling Monosemanticity."""

    judge: RaterSpec = EmbeddingRater(backend="embedding")
    """Who rates: `embedding` (MiniLM, offline), `openai` (an endpoint; the article's method) or
    `local` (a Hugging Face model; SmolLM2-135M cannot rate: docs/checks.md)."""
    explainer: str | None = Field(default=None, max_length=300)
    """Whose labels to check (an explainer name of the label job, e.g. `metadata`); None: the
    label job's first explainer."""
    max_features: int | None = Field(default=32, gt=0)
    """Check at most this many labelled features (in the label job's order); None: all."""
    n_zero: int = Field(default=4, ge=0, le=100)
    """Contexts where the feature is silent, per feature."""
    n_bins: int = Field(default=4, ge=1, le=20)
    """Equal-count bins of the activating contexts, lowest first."""
    n_per_bin: int = Field(default=3, ge=1, le=100)


class SensitivityCheck(Frozen):
    """Do features that fire on an English article fire on its French and Spanish versions?"""

    languages: list[Literal["fr", "es"]] = Field(default=["fr", "es"], min_length=1, max_length=2)
    n_pairs: int = Field(default=256, ge=8, le=5_000)
    """Articles present in English and every listed language (paired by title), sampled."""
    max_doc_share: float = Field(default=0.05, gt=0.0, le=1.0)
    """Features firing on more of the English articles than this are not about one concept and
    are left out."""


class CategoryMember(Frozen):
    name: str = Field(min_length=1, max_length=200)
    """Shown in the report; also the title of its English builtin article when `texts` is empty."""
    texts: list[Annotated[str, Field(min_length=1, max_length=20_000)]] = Field(default=[], max_length=32)
    """Contexts about the member; empty: the builtin English article titled `name`."""


class Category(Frozen):
    name: str = Field(min_length=1, max_length=200)
    members: list[CategoryMember] = Field(min_length=2, max_length=2_000)


class CompletenessCheck(Frozen):
    """For each member of a closed category: is there a feature specific to it?"""

    categories: list[Category] | None = Field(default=None, max_length=16)
    """None: the builtin category, the chemical elements hydrogen to curium."""
    max_background_rate: float = Field(default=0.01, ge=0.0, le=1.0)
    """A feature is specific to a member when it fires on the member's contexts and, at half that
    activation or more, on no other member and on at most this share of the background articles."""


class ProbingCheck(Frozen):
    """k-sparse logistic probes for the English articles' topics, on SAE latents and on the raw
    activations."""

    ks: list[Annotated[int, Field(ge=1, le=1024)]] = Field(default=[1, 2, 5, 20], min_length=1, max_length=8)
    test_share: float = Field(default=0.3, gt=0.0, lt=1.0)
    min_per_class: int = Field(default=20, ge=4)
    """A topic needs this many articles (and as many others) to be probed."""


class AbsorptionCheck(Frozen):
    """SAEBench's first-letter absorption: on single-token words of the model's vocabulary, where
    does the SAE's "starts with L" latent stay silent while another latent carries the letter?"""

    letters: str = Field(default="abcdefghijklmnopqrstuvwxyz", min_length=1, max_length=26, pattern=r"^[a-z]+$")
    """The first letters probed, each once (lowercase a-z)."""
    words_per_letter: int = Field(default=128, ge=4, le=5_000)
    """At most this many words per letter, sampled from the vocabulary."""
    test_share: float = Field(default=0.3, gt=0.0, lt=1.0)
    """Of each letter's words, the share held out: probes are fitted on the rest, absorption is
    measured on these."""
    n_examples: int = Field(default=4, ge=0, le=32)
    """Solved examples ("{word} has the first letter: W") before each word, from its own split
    (SAEBench reads 10; 4 costs 40% of the tokens, so twice the words fit: docs/checks.md)."""
    max_k: int = Field(default=10, ge=1, le=64)
    """Most main latents per letter that k-sparse probing may find."""
    min_probe_f1: float = Field(default=0.6, ge=0.0, le=1.0)
    """A letter whose raw-activation probe scores a lower test F1 is left out of the means."""

    @field_validator("letters")
    @classmethod
    def _each_once(cls, letters: str) -> str:
        twice = sorted({c for c in letters if letters.count(c) > 1})
        if twice:
            raise ValueError(f"letters listed twice: {''.join(twice)}")
        return letters


class Checks(Frozen):
    """The seed's qualitative checks, made quantitative. They read the builtin English, French and
    Spanish Wikipedia summaries, whatever corpus the SAE was trained on."""

    label_job: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")
    """A label job of this SAE; specificity needs its labels and feature index (skipped without)."""
    n_docs: int = Field(default=1024, ge=16, le=10_000)
    """English articles sampled (held out from the SAE's harvest when it read the builtin English
    corpus) for probing and as the background of completeness."""
    context_len: int = Field(default=128, ge=8, le=4096)
    """Tokens read from the start of each article."""
    batch_size: int = Field(default=16, ge=1, le=1024)
    specificity: SpecificityCheck | None = SpecificityCheck()
    sensitivity: SensitivityCheck | None = SensitivityCheck()
    completeness: CompletenessCheck | None = CompletenessCheck()
    probing: ProbingCheck | None = ProbingCheck()
    absorption: AbsorptionCheck | None = None
    """First-letter absorption (docs/checks.md); off unless given (`absorption: {}` for the
    defaults): it reads its own prompts, about 100k tokens with them."""
