"""Sensitivity: articles paired across languages by title, and recall of a feature on the
translations of the English articles it fires on."""

from __future__ import annotations

import torch

from saeq.checks.sensitivity import fold_title, pair_titles, sensitivity
from saeq.ml.corpus import builtin_documents


def test_titles_pair_across_case_and_accents_but_not_when_ambiguous():
    english = ["Emile Zola", "Paris", "Golden Gate Bridge", "Mercury", "MERCURY"]
    french = ["Émile Zola", "paris", "Pont du Golden Gate", "Mercury"]
    assert fold_title("  Émile   ZOLA ") == "emile zola"
    assert pair_titles(english, french) == {0: 0, 1: 1}  # "Mercury" folds twice in English


def test_the_builtin_corpus_gives_thousands_of_pairs():
    en = [d.title for d in builtin_documents("wiki-en")]
    fr = pair_titles(en, [d.title for d in builtin_documents("wiki-fr")])
    es = pair_titles(en, [d.title for d in builtin_documents("wiki-es")])
    assert len(fr) > 2_000 and len(es) > 1_000 and len(fr.keys() & es.keys()) > 900
    i = next(i for i, t in enumerate(en) if t == "Albert Einstein")
    assert builtin_documents("wiki-fr")[fr[i]].title == "Albert Einstein"


def test_recall_counts_translations_and_false_positives_count_the_rest():
    P = 40
    en, fr = torch.zeros(P, 4), torch.zeros(P, 4)
    en[:4, 0] = fr[:4, 0] = 1.0  # feature 0: the same four articles in both languages
    en[:4, 1] = 1.0
    fr[10:14, 1] = 1.0  # feature 1: four other articles in French
    en[:, 2] = fr[:, 2] = 1.0  # feature 2: every article, about no one concept
    en[5:7, 3] = 1.0
    fr[5, 3] = 1.0  # feature 3: one of its two articles
    r = sensitivity(en, fr, max_doc_share=0.1)
    by_f = {f["feature"]: f for f in r["features"]}
    assert set(by_f) == {0, 1, 3}
    assert by_f[0]["recall"] == 1.0 and by_f[0]["false_positive_rate"] == 0.0
    assert by_f[1]["recall"] == 0.0 and by_f[1]["false_positive_rate"] == 4 / 36
    assert by_f[3]["recall"] == 0.5
    s = r["summary"]
    assert s["n_features"] == 3 and s["pooled_recall"] == 5 / 10
    assert abs(s["mean_recall"] - 0.5) < 1e-6 and abs(s["share_recall_at_least_half"] - 2 / 3) < 1e-6
    # Intervals over the 40 article pairs: around the figures, and wide, from 10 firings in 7 articles.
    for key in ("pooled_recall", "mean_recall"):
        ci = s[f"{key}_ci"]
        assert (ci["value"], ci["n"], ci["unit"]) == (s[key], 40, "article pairs"), key
        assert ci["low"] < s[key] < ci["high"] and ci["high"] - ci["low"] > 0.2, (key, ci)
    fpr = s["mean_false_positive_rate_ci"]
    assert (fpr["value"], fpr["n"], fpr["unit"]) == (s["mean_false_positive_rate"], 40, "article pairs")
    assert fpr["low"] <= s["mean_false_positive_rate"] <= fpr["high"] and fpr["high"] > fpr["low"]
    # Each feature's own recall and false-positive rate: Wilson over its articles.
    assert by_f[3]["recall_ci"]["n"] == 2 and by_f[3]["recall_ci"]["low"] < 0.5 < by_f[3]["recall_ci"]["high"]
    assert by_f[1]["false_positive_rate_ci"]["n"] == 36 and by_f[1]["false_positive_rate_ci"]["method"] == "wilson"
