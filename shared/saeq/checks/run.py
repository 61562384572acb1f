"""All four checks over one pass of the builtin Wikipedia articles: which articles to read, their
activations, and the results with their figures; and first-letter absorption on its own prompts.
Each check's result is handed out as it is finished (CheckPart), and one finished by an earlier
attempt is taken back instead of redone."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from saeq.checks import plots
from saeq.checks.absorption_words import measure_absorption
from saeq.checks.completeness import completeness, coverage_summary
from saeq.checks.documents import DocumentActs, document_activations, tokenize_documents
from saeq.checks.elements import ELEMENTS, TITLE_OF
from saeq.checks.probing import sparse_probing
from saeq.checks.sensitivity import pair_titles, sensitivity
from saeq.checks.specificity import Rater, specificity
from saeq.errors import Cancelled, InvalidSpec
from saeq.ml.corpus import builtin_documents
from saeq.ml.explainers import Decode, Explanation
from saeq.ml.features import FeatureIndex
from saeq.ml.models import LoadedModel
from saeq.ml.sae import SparseAutoencoder
from saeq.ml.sinks import SinkReference
from saeq.specs import Category, CategoryMember, Checks

CHECKS_VERSION = "saeq.checks/1"
UNLABELLED_TOPICS = {"Uncategorized"}
BUILTIN_CATEGORY = Category(name="chemical elements", members=[CategoryMember(name=e.name) for e in ELEMENTS])


@dataclass
class LabelContext:
    """What specificity needs from a label job."""

    labels: dict[int, Explanation]
    """Every labelled feature's label, by the explainer checked."""
    index: FeatureIndex
    decode: Decode
    rater: Rater
    before: int
    after: int


@dataclass
class ChecksResult:
    doc: dict
    pngs: dict[str, bytes] = field(default_factory=dict)


@dataclass
class CheckPart:
    """One check's finished result: its section of the checks doc (JSON values only) and its figures."""

    doc: dict
    pngs: dict[str, bytes] = field(default_factory=dict)


CHECK_NAMES = ("completeness", "sensitivity", "probing", "specificity", "absorption")
"""The checks in the order they run and their sections appear."""


@dataclass
class _Plan:
    """Which English rows are what, and the other languages' rows paired with English ones."""

    english: list[str] = field(default_factory=list)
    topics: list[str | None] = field(default_factory=list)
    sample: list[int] = field(default_factory=list)
    """Rows of English articles about no category member: probing and completeness background."""
    members: dict[str, list[list[int]]] = field(default_factory=dict)
    """Category -> member -> its rows."""
    pairs: dict[str, tuple[list[int], list[str]]] = field(default_factory=dict)
    """Language -> (English rows, the paired articles' texts)."""
    n_members_seen_in_training: int = 0


def plan_documents(spec: Checks, *, training_docs: set[int], seed: int) -> _Plan:
    """English articles held out from training where possible (category members' articles are
    used even when the SAE saw them, and counted)."""
    en = builtin_documents("wiki-en")
    by_title = {d.title: d.doc_id for d in en}
    rng = random.Random(seed)
    plan = _Plan()
    rows_of: dict[int, int] = {}

    def add(doc_id: int) -> int:
        if doc_id not in rows_of:
            rows_of[doc_id] = len(plan.english)
            plan.english.append(en[doc_id].text)
            plan.topics.append(None if en[doc_id].topic in UNLABELLED_TOPICS else en[doc_id].topic)
        return rows_of[doc_id]

    member_docs: set[int] = set()
    if spec.completeness is not None:
        for ci, cat in enumerate(spec.completeness.categories or [BUILTIN_CATEGORY]):
            per_member = []
            for mi, m in enumerate(cat.members):
                if m.texts:
                    per_member.append([len(plan.english) + i for i in range(len(m.texts))])
                    plan.english += m.texts
                    plan.topics += [None] * len(m.texts)
                    continue
                title = TITLE_OF.get(m.name, m.name) if spec.completeness.categories is None else m.name
                if title not in by_title:
                    raise InvalidSpec(
                        f"no English builtin article titled {m.name!r}; give the member texts",
                        field=f"spec.checks.completeness.categories[{ci}].members[{mi}]",
                    )
                member_docs.add(by_title[title])
                plan.n_members_seen_in_training += by_title[title] in training_docs
                per_member.append([add(by_title[title])])
            plan.members[cat.name] = per_member

    held_out = [d.doc_id for d in en if d.doc_id not in training_docs and d.doc_id not in member_docs]
    if spec.sensitivity is not None:
        langs = spec.sensitivity.languages
        others = {lang: builtin_documents(f"wiki-{lang}") for lang in langs}
        paired = {lang: pair_titles([d.title for d in en], [d.title for d in others[lang]]) for lang in langs}
        candidates = [i for i in held_out if all(i in paired[lang] for lang in langs)]
        chosen = sorted(rng.sample(candidates, min(spec.sensitivity.n_pairs, len(candidates))))
        rows = [add(i) for i in chosen]
        for lang in langs:
            plan.pairs[lang] = (rows, [others[lang][paired[lang][i]].text for i in chosen])
    rest = [i for i in held_out if i not in rows_of]
    plan.sample = [rows_of[i] for i in held_out if i in rows_of and i not in member_docs]
    plan.sample += [add(i) for i in sorted(rng.sample(rest, min(spec.n_docs, len(rest))))]
    return plan


def run_checks(
    spec: Checks,
    sae: SparseAutoencoder,
    lm: LoadedModel,
    hook: str,
    *,
    sinks: SinkReference | None,
    training_docs: set[int],
    seed: int,
    labelled: LabelContext | None,
    title: str,
    all_labels: dict[int, Explanation] | None = None,
    finished: Mapping[str, CheckPart] | None = None,
    on_check: Callable[[str, CheckPart], None] = lambda name, part: None,
    should_stop: Callable[[], bool] = lambda: False,
    on_progress: Callable[[str, float], None] = lambda stage, fraction: None,
    layer_hooks: Sequence[str] | None = None,
) -> ChecksResult:
    """The checks `spec` names. `finished`: parts (by check name) an earlier attempt completed,
    taken as they are; the English articles' activations are only computed when a check that
    reads them is left. `on_check` sees each part finished here. `hook` is what the features are
    read from (a transcoder's input hook); `layer_hooks` a crosscoder's hooks, read all at once."""
    plan = plan_documents(spec, training_docs=training_docs, seed=seed)
    n_other = sum(len(texts) for _, texts in plan.pairs.values())
    total = len(plan.english) + n_other

    def acts(texts: list[str], done_before: int) -> DocumentActs:
        ids = tokenize_documents(texts, lm.tokenizer, context_len=spec.context_len)
        return document_activations(
            sae,
            lm,
            hook,
            ids,
            sinks=sinks,
            batch_size=spec.batch_size,
            should_stop=should_stop,
            on_batch=lambda n: on_progress("read articles", (done_before + n) / total),
            layer_hooks=layer_hooks,
        )

    finished = finished or {}
    wanted = [name for name in CHECK_NAMES if getattr(spec, name) is not None]
    english = None
    if any(name not in finished for name in wanted if name not in ("specificity", "absorption")):
        english = acts(plan.english, 0)
    doc: dict = {
        "checks_version": CHECKS_VERSION,
        "context_len": spec.context_len,
        "n_english_articles": len(plan.english),
        "n_translated_articles": n_other,
    }
    out = ChecksResult(doc)
    for name in wanted:
        part = finished.get(name)
        if part is None:
            if should_stop():
                raise Cancelled("checks cancelled")
            if name == "specificity":
                part = _specificity(spec, labelled, seed, title, on_progress)
            elif name == "absorption":
                part = _absorption(spec, sae, lm, hook, sinks, seed, should_stop, on_progress)
            else:
                assert english is not None  # computed above: a check that reads it is left
                names = all_labels or {}
                part = _CHECKS[name](spec, plan, english, names, title, acts, seed)
            # As JSON reads it back, so that a part kept by an earlier attempt and a fresh one are alike.
            part = CheckPart(json.loads(json.dumps(part.doc)), part.pngs)
            on_check(name, part)
        doc[name] = part.doc
        out.pngs.update(part.pngs)
    return out


def _completeness(spec: Checks, plan: _Plan, english: DocumentActs, names, title: str, acts, seed: int) -> CheckPart:
    assert spec.completeness is not None
    background = english.max_DS[plan.sample]
    doc: dict = {
        "max_background_rate": spec.completeness.max_background_rate,
        "n_background": len(plan.sample),
        "n_members_seen_in_training": plan.n_members_seen_in_training,
        "categories": [],
    }
    pngs: dict[str, bytes] = {}
    for i, cat in enumerate(spec.completeness.categories or [BUILTIN_CATEGORY]):
        member_max = torch.stack([english.max_DS[rows].amax(0) for rows in plan.members[cat.name]])
        results = completeness(
            member_max,
            background,
            [m.name for m in cat.members],
            max_background_rate=spec.completeness.max_background_rate,
        )
        members = [{**r.to_dict(), "label": _label(names, r.feature)} for r in results]
        doc["categories"].append({"name": cat.name, "summary": coverage_summary(results), "members": members})
        pngs[f"completeness_{i}.png"] = plots.completeness_plot(members, cat.name, title)
    return CheckPart(doc, pngs)


def _sensitivity(spec: Checks, plan: _Plan, english: DocumentActs, names, title: str, acts, seed: int) -> CheckPart:
    assert spec.sensitivity is not None
    done = len(plan.english)
    doc: dict = {"max_doc_share": spec.sensitivity.max_doc_share, "languages": {}}
    for lang, (rows, texts) in plan.pairs.items():
        other = acts(texts, done)
        done += len(texts)
        r = sensitivity(english.max_DS[rows], other.max_DS, max_doc_share=spec.sensitivity.max_doc_share)
        for f in r["features"]:
            f["label"] = _label(names, f["feature"])
        doc["languages"][lang] = r
    return CheckPart(doc, {"sensitivity.png": plots.sensitivity_plot(doc["languages"], title)})


def _probing(spec: Checks, plan: _Plan, english: DocumentActs, names, title: str, acts, seed: int) -> CheckPart:
    assert spec.probing is not None
    rows = [i for i in plan.sample if plan.topics[i] is not None]  # held out, no category member
    p = spec.probing
    doc = sparse_probing(
        english.mean_DS[rows].numpy(),
        english.raw_mean_DM[rows].numpy(),
        [plan.topics[i] for i in rows],
        ks=p.ks,
        test_share=p.test_share,
        min_per_class=p.min_per_class,
        seed=seed,
    )
    return CheckPart(doc, {"probing.png": plots.probing_plot(doc, title)} if doc["n_topics"] else {})


_CHECKS = {"completeness": _completeness, "sensitivity": _sensitivity, "probing": _probing}


def _specificity(spec: Checks, labelled: LabelContext | None, seed: int, title: str, on_progress) -> CheckPart:
    if labelled is None:
        return CheckPart({"skipped": "no label_job given: specificity needs labels"})
    assert spec.specificity is not None
    on_progress("rate contexts", 0.0)
    s = spec.specificity
    doc = specificity(
        labelled.index,
        labelled.labels,
        labelled.rater,
        labelled.decode,
        n_zero=s.n_zero,
        n_bins=s.n_bins,
        n_per_bin=s.n_per_bin,
        before=labelled.before,
        after=labelled.after,
        seed=seed,
    )
    return CheckPart(doc, {"specificity.png": plots.specificity_plot(doc, title)})


def _absorption(spec: Checks, sae, lm, hook, sinks, seed: int, should_stop, on_progress) -> CheckPart:
    assert spec.absorption is not None
    doc = measure_absorption(
        spec.absorption,
        sae,
        lm,
        hook,
        sinks=sinks,
        batch_size=spec.batch_size,
        seed=seed,
        should_stop=should_stop,
        on_batch=lambda fraction: on_progress("absorption prompts", fraction),
    )
    return CheckPart(doc)


def _label(labels: dict[int, Explanation], feature: int | None) -> str | None:
    return labels[feature].label if feature is not None and feature in labels else None
