"""Specificity on planted features: one fires on "hydrogen" only, harder the more it is the
subject; another fires everywhere. A judge rates the contexts 0-3 (a real OpenAI-protocol server
following a keyword rule, MiniLM, or a tiny local model); the first is specific, the second not."""

from __future__ import annotations

import re

import pytest
import torch

from saeq.checks.specificity import BIN_NAMES, EmbeddingRater, EndpointRater, LocalRater, activation_bin, specificity
from saeq.ml.explainers import Explanation, LocalLLM
from saeq.ml.features import FeatureIndex
from saeq.ml.llm import ChatEndpoint
from saeq.ml.scoring import EmbeddingScorer
from saeq.specs.metrics import checks_lines

HYDROGEN = [
    "hydrogen is the lightest chemical element and burns with oxygen to make water",
    "the sun fuses hydrogen into helium deep inside its hot dense core every second",
    "a hydrogen atom has one proton and one electron bound by the electric force",
]
OTHER = [
    "the orchestra played a long symphony for the crowd in the old concert hall",
    "farmers harvest wheat in late summer before the autumn rains arrive in the valley",
    "the senate passed the new budget after a long debate about taxes and schools",
    "the striker scored twice as the home team won the football match on sunday",
]
LABEL = Explanation("hydrogen", "The chemical element hydrogen.")


def _planted():
    """36 contexts of 12 words: 18 about hydrogen, 18 not. Feature 0 fires on "hydrogen" (more
    strongly in later contexts); feature 1 fires on every word with random strength."""
    texts = [HYDROGEN[i % 3] for i in range(18)] + [OTHER[i % 4] for i in range(18)]
    words = [t.split()[:12] for t in texts]
    vocab = sorted({w for ws in words for w in ws})
    ids = torch.tensor([[vocab.index(w) for w in ws] for ws in words])
    acts = torch.zeros(36, 12, 2)
    g = torch.Generator().manual_seed(0)
    for c, ws in enumerate(words):
        for t, w in enumerate(ws):
            if w == "hydrogen":
                acts[c, t, 0] = 1.0 + c / 6
    acts[:, 1:, 1] = 0.5 + torch.rand(36, 11, generator=g)
    sinks = torch.zeros(36, 12, dtype=torch.bool)
    sinks[:, 0] = True
    index = FeatureIndex.from_dense(ids, torch.arange(36).repeat_interleave(12).view(36, 12), sinks, acts)
    return index, (lambda token_ids: [" " + vocab[i] for i in token_ids])


def _keyword_rater(request: dict) -> str:
    planted = re.search(r'Concept: the word "(\w+)"', request["messages"][-1]["content"])  # a control trial
    concept = planted.group(1) if planted else re.search(r"Concept: (\w+)", request["messages"][-1]["content"]).group(1)
    text = re.search(r"Text: (.*)", request["messages"][-1]["content"]).group(1)
    return "3" if concept in text else "0"


def _check(index, decode, rater):
    return specificity(
        index, {0: LABEL, 1: LABEL}, rater, decode, n_zero=4, n_bins=3, n_per_bin=3, before=6, after=5, seed=0
    )


@pytest.mark.parametrize("logprobs", [True, False])
def test_a_feature_on_its_concept_is_specific_and_one_firing_everywhere_is_not(openai_server, logprobs):
    server = openai_server(_keyword_rater, logprobs=logprobs)
    rater = EndpointRater(ChatEndpoint(server.base_url, "judge", api_key=None), "openai:judge")
    index, decode = _planted()
    r = _check(index, decode, rater)
    hydrogen, everywhere = r["features"]
    assert hydrogen["feature"] == 0 and len(hydrogen["contexts"]) == 4 + 9
    assert hydrogen["spearman"] > 0.8
    assert hydrogen["high_rated_share_by_bin"][0] == 0.0  # silent contexts: not about hydrogen
    assert all(v == 1.0 for v in hydrogen["high_rated_share_by_bin"][1:] if v is not None)
    # everywhere: its high activations land on unrelated text as often as on hydrogen
    assert everywhere["spearman"] is None or everywhere["spearman"] < 0.5
    top = everywhere["high_rated_share_by_bin"][-1]
    assert top is not None and top < 0.8
    assert r["summary"]["n_features"] == 2 and r["rater"] == "openai:judge"
    rhos = [f["spearman"] for f in r["features"] if f["spearman"] is not None]
    ci = r["summary"]["mean_spearman_ci"]
    assert (ci["value"], ci["n"], ci["unit"]) == (r["summary"]["mean_spearman"], len(rhos), "features")
    if len(rhos) > 1:  # a mean of features' correlations, resampled over features
        assert min(rhos) <= ci["low"] <= ci["value"] <= ci["high"] <= max(rhos)
    else:  # one feature: no interval, rather than one of width 0
        assert ci["low"] != ci["low"] and ci["high"] != ci["high"]
    counts = r["summary"]["rating_counts_by_bin"]
    assert sum(map(sum, counts)) == r["summary"]["n_contexts"] == 13 + 9  # no silent window: fires everywhere
    assert len(counts) == len(BIN_NAMES) == len(r["bins"])
    control = r["summary"]["rater_control"]  # planted "the word X" trials: this rater passes them
    assert control["calibrated"] and control["accuracy"]["value"] == 1.0 and control["accuracy"]["n"] >= 16
    assert r["summary"]["flag"] is None and control["scorer"] == "specificity" and control["judge"] == "openai:judge"


def test_a_rater_that_cannot_tell_is_flagged_uncalibrated(openai_server):
    server = openai_server(lambda request: "2")  # the same rating for every text
    rater = EndpointRater(ChatEndpoint(server.base_url, "judge", api_key=None), "openai:judge")
    index, decode = _planted()
    summary = _check(index, decode, rater)["summary"]
    assert not summary["rater_control"]["calibrated"]
    assert summary["flag"].startswith("judge uncalibrated: scores uninformative")
    line = next(
        ln for ln in checks_lines({"specificity": {**summary, "rater": "openai:judge"}}) if "rater control" in ln
    )
    assert "judge uncalibrated: scores uninformative" in line and "(n=" in line


def test_embedding_rater_rates_text_about_the_label_higher():
    rater = EmbeddingRater(EmbeddingScorer())
    ratings = rater.rate([(LABEL, t) for t in HYDROGEN + OTHER])
    on, off = ratings[:3], ratings[3:]
    assert min(r.score for r in on) > max(r.score for r in off)
    assert min(r.rating for r in on) >= 2 and max(r.rating for r in off) <= 1


def test_local_rater_gives_a_distribution_over_0_to_3(tiny_llama, one_thread):
    rater = LocalRater(LocalLLM(tiny_llama), "local:tiny")
    ratings = rater.rate([(LABEL, HYDROGEN[0]), (LABEL, OTHER[0])])
    assert all(0.0 <= r.score <= 3.0 and r.rating in range(4) for r in ratings)
    probs = LocalLLM(tiny_llama).option_probabilities(["Rating:"], ["0", "1", "2", "3"])[0]
    assert len(probs) == 4 and abs(sum(probs) - 1) < 1e-5


def test_activation_bins():
    assert [activation_bin(f) for f in (0.0, 0.1, 0.25, 0.26, 0.5, 0.75, 0.9, 1.0)] == [0, 1, 1, 2, 2, 3, 4, 4]
