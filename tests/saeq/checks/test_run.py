"""Which articles the checks read: held out from training, members' articles found by title,
translations paired, a member without an article refused by name."""

from __future__ import annotations

import pytest

from saeq.checks.run import plan_documents
from saeq.checks.sensitivity import fold_title
from saeq.errors import InvalidSpec
from saeq.ml.corpus import builtin_documents, builtin_order
from saeq.specs import Checks


def test_articles_are_held_out_and_members_found():
    en = builtin_documents("wiki-en")
    trained = set(builtin_order("wiki-en", 0)[:3000])
    plan = plan_documents(Checks(n_docs=200, sensitivity={"n_pairs": 40}), training_docs=trained, seed=1)
    text_to_id = {d.text: d.doc_id for d in en}
    sample_ids = [text_to_id[plan.english[r]] for r in plan.sample]
    assert len(sample_ids) == 240 and not set(sample_ids) & trained  # 200 sampled + 40 paired
    elements = plan.members["chemical elements"]
    assert len(elements) == 96 and en[text_to_id[plan.english[elements[0][0]]]].title == "Hydrogen"
    assert en[text_to_id[plan.english[elements[79][0]]]].title == "Mercury (element)"
    assert not {r for rows in elements for r in rows} & set(plan.sample)
    rows, french = plan.pairs["fr"]
    assert len(rows) == len(french) == 40 and set(rows) <= set(plan.sample)
    fr_titles = {d.text: d.title for d in builtin_documents("wiki-fr")}
    for r, text in zip(rows, french, strict=False):
        assert fold_title(fr_titles[text]) == fold_title(en[text_to_id[plan.english[r]]].title)


def test_own_category_members_by_title_or_texts_and_a_missing_title_is_named():
    category = {
        "name": "planets",
        "members": [
            {"name": "Mars"},
            {"name": "Venus"},
            {"name": "Planet Nine", "texts": ["A ninth planet may orbit far out."]},
        ],
    }
    plan = plan_documents(
        Checks(n_docs=20, sensitivity=None, completeness={"categories": [category]}), training_docs=set(), seed=0
    )
    mars, venus, nine = plan.members["planets"]
    assert plan.english[mars[0]].startswith("Mars") and plan.english[nine[0]] == "A ninth planet may orbit far out."
    bad = {**category, "members": [{"name": "Mars"}, {"name": "Vulcan (hypothetical planet)"}]}
    with pytest.raises(InvalidSpec) as e:
        plan_documents(Checks(completeness={"categories": [bad]}, sensitivity=None), training_docs=set(), seed=0)
    assert e.value.field == "spec.checks.completeness.categories[0].members[1]"
