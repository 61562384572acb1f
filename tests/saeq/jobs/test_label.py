"""Labelling and scoring on a planted feature: it fires on fruit words only. The right label scores
high with every scorer, an unrelated one scores about chance; explainers and judge talk to a real
OpenAI-protocol server whose judge follows a keyword rule."""

from __future__ import annotations

import re

import pytest
import torch

from saeq.jobs.label import label_features, sample_feature, select_features
from saeq.jobs.label_bins import density_bin_scores
from saeq.jobs.label_controls import run_controls
from saeq.ml.corpus import Document
from saeq.ml.explainers import (
    PROMPT_VERSION,
    EndpointExplainer,
    EndpointJudge,
    Explanation,
    MetadataExplainer,
    parse_label_reply,
    parse_theme,
)
from saeq.ml.features import FeatureIndex
from saeq.ml.llm import ChatEndpoint, EndpointError
from saeq.ml.scoring import EmbeddingScorer, classification_scores, detection_items, judge_scores
from saeq.specs import LabelSpec

FRUITS = {"apple", "banana", "cherry", "mango", "pear", "plum", "grape", "peach"}
FRUIT_SENTENCES = [
    "we ate a ripe {} after lunch in the sunny garden with friends",
    "the market sold a sweet {} and bread to every hungry visitor today",
    "she sliced the fresh {} into the bowl before breakfast this morning",
]
OTHER_SENTENCES = [
    "the train left the station late because of heavy snow on the tracks",
    "engineers tested the new engine on the highway near the old bridge",
    "the committee voted on the budget during a long meeting last week",
    "a storm brought strong wind and rain to the northern coast tonight",
]


def _planted():
    """40 contexts of 12 words; feature 0 fires on the fruit word of contexts 0..19 (strength
    varies), feature 1 fires nowhere. Token ids are word ids."""
    fruits = sorted(FRUITS)
    texts = [FRUIT_SENTENCES[i % 3].format(fruits[i % len(fruits)]) for i in range(20)]
    texts += [OTHER_SENTENCES[i % 4] for i in range(20)]
    words = [t.split()[:12] for t in texts]
    vocab = sorted({w for ws in words for w in ws})
    ids = torch.tensor([[vocab.index(w) for w in ws] for ws in words])
    acts = torch.zeros(40, 12, 2)
    for c, ws in enumerate(words):
        for t, w in enumerate(ws):
            if w in FRUITS:
                acts[c, t, 0] = 1.0 + c / 10
    docs = torch.arange(40).repeat_interleave(12).view(40, 12)
    sinks = torch.zeros(40, 12, dtype=torch.bool)
    index = FeatureIndex.from_dense(ids, docs, sinks, acts)
    return index, (lambda token_ids: [" " + vocab[i] for i in token_ids])


def _keyword_judge(request: dict) -> str:
    """Explains by the marked words; judges "fruit" concepts by keyword, and nothing else."""
    system, user = request["messages"][0]["content"], request["messages"][-1]["content"]
    if system.startswith("You explain"):
        marked = re.findall(r"<<(\w+)>>", user)
        if marked and sum(w in FRUITS for w in marked) > len(marked) / 2:
            return "Label: fruit\nDescription: Names of fruits."
        return "Label: travel\nDescription: Trips."
    concept = re.search(r"Concept: (.*)", user).group(1)
    text = re.search(r"Text: (.*)", user).group(1)
    if "fruit" not in concept:
        return "No"
    if "marked" in user:
        marked = re.findall(r"<<(\w+)>>", text)
        return "Yes" if marked and all(w in FRUITS for w in marked) else "No"
    return "Yes" if FRUITS & set(re.findall(r"\w+", text)) else "No"


@pytest.fixture(scope="module")
def embedder():
    return EmbeddingScorer()


def _spec(**kw) -> LabelSpec:
    return LabelSpec(
        sae={"job_id": "0" * 32}, n_explain_examples=4, n_score_examples=10, window_before=11, window_after=0, **kw
    )


def test_right_label_scores_high_and_an_unrelated_one_about_chance(openai_server, embedder):
    index, decode = _planted()
    spec = _spec()
    server = openai_server(_keyword_judge)
    judge = EndpointJudge(ChatEndpoint(server.base_url, "judge", api_key=None), "openai:judge")
    sample = sample_feature(index, 0, spec)
    assert len(sample.activating) == 10 and len(sample.silent) == 10
    assert not {e.context for e in sample.top} & {e.context for e in sample.activating}

    right, wrong = Explanation("fruit", "Names of fruits."), Explanation("medieval tax law", "Feudal dues.")
    for expl, lo, hi in ((right, 0.95, 1.0), (wrong, 0.5, 0.5)):
        (det,) = judge_scores(judge, "detection", [detection_items(expl, sample.activating, sample.silent, decode)])
        assert lo <= det.balanced_accuracy <= hi
    emb_right = embedder.score(right, sample.activating, sample.silent, decode)
    emb_wrong = embedder.score(wrong, sample.activating, sample.silent, decode)
    assert emb_right.auc > 0.9
    assert 0.2 < emb_wrong.auc < 0.8


def test_label_features_writes_one_scored_record_per_feature_and_explainer(openai_server, embedder):
    index, decode = _planted()
    spec = _spec(features=[0])
    server = openai_server(_keyword_judge)
    endpoint = ChatEndpoint(server.base_url, "m", api_key=None)
    docs = {i: Document(i, "", f"Article {i}", "Food" if i < 20 else "Transport") for i in range(40)}
    explainers = [
        EndpointExplainer(endpoint, decode, 60, "openai:m"),
        MetadataExplainer(lambda ids: {i: docs[i] for i in ids}, decode),
    ]
    records = label_features(
        index,
        select_features(index, spec),
        spec,
        explainers=explainers,
        judge=EndpointJudge(endpoint, "openai:m"),
        embedder=embedder,
        decode=decode,
    )
    by = {r["explainer"]: r for r in records}
    assert set(by) == {"openai:m", "metadata"}
    assert by["openai:m"]["label"] == "fruit" and by["metadata"]["label"] == "Food"
    for r in records:
        assert r["feature"] == 0 and r["prompt_version"] == PROMPT_VERSION
        assert set(r["scores"]) == {"detection", "fuzzing", "embedding"}
    s = by["openai:m"]["scores"]
    assert s["detection"]["auc"] == 1.0 and s["fuzzing"]["balanced_accuracy"] == 1.0
    assert s["embedding"]["auc"] > 0.9
    # Per decade of density: the fruit feature fires on 20 of 480 tokens (4.2%), bin 1%-10%.
    bins = density_bin_scores(index, records, spec)
    assert [(b.low, b.n_eligible, b.n_labelled) for b in bins] == [
        (1e-4, 0, 0),
        (1e-3, 0, 0),
        (1e-2, 1, 1),
        (0.1, 0, 0),
    ]
    scored = {(sc.explainer, sc.scorer): sc.auc for sc in bins[2].scores}
    assert len(scored) == 6 and scored[("openai:m", "detection")].value == 1.0
    assert all(e.n == 1 and e.unit == "features" for e in scored.values())


def test_a_failing_endpoint_fails_labelling_with_its_reason(openai_server, embedder):
    index, decode = _planted()
    server = openai_server(lambda req: (503, {"error": {"message": "model is loading"}}))
    endpoint = ChatEndpoint(server.base_url, "m", api_key=None, max_retries=0)
    with pytest.raises(EndpointError, match="model is loading"):
        label_features(
            index,
            [0],
            _spec(),
            explainers=[EndpointExplainer(endpoint, decode, 60, "openai:m")],
            judge=None,
            embedder=embedder,
            decode=decode,
        )


def test_most_active_selection_skips_features_that_rarely_fire():
    index, _ = _planted()
    assert select_features(index, _spec()) == [0]
    assert select_features(index, _spec(features=[1, 0, 1])) == [1, 0]
    with pytest.raises(Exception, match="spec.features|not in 0..1"):
        select_features(index, _spec(features=[5]))


def test_scores_and_reply_parsing():
    s = classification_scores([1, 1, 0, 0], [0.9, 0.8, 0.1, 0.6])
    assert s.accuracy == 0.75 and s.balanced_accuracy == 0.75 and s.auc == 1.0
    always_yes = classification_scores([1, 1, 0, 0], [0.9, 0.9, 0.9, 0.9])
    assert always_yes.balanced_accuracy == 0.5 and always_yes.auc == 0.5
    assert parse_label_reply("**Label:** Fruit names\nDescription: Words for fruit.") == Explanation(
        "Fruit names", "Words for fruit."
    )
    assert parse_label_reply("Just fruit").label == "Just fruit"
    assert parse_theme(" fruit\nMeaning: names of fruits.\n\nWords:") == Explanation("fruit", "names of fruits.")


def test_minilm_passes_its_planted_controls(embedder):
    """The embedding scorer's control trials (saeq.jobs.label_controls): MiniLM puts `the word "X"`
    nearer windows holding X than windows without it (measured here: 23 of 24 trials right)."""
    index, decode = _planted()
    (emb,) = run_controls(index, [0], [], _spec(), judge=None, embedder=embedder, decode=decode)
    assert emb.scorer == "embedding" and emb.judge == embedder.name and set(emb.by_kind) == {"planted"}
    assert emb.calibrated and emb.flag is None and emb.accuracy.n >= 16 and emb.accuracy.low > 0.7
