"""Control trials of the label job's judges: a judge that follows the text passes them, one that
answers at random (or always yes) is flagged uncalibrated; the judges talk to a real
OpenAI-protocol server. Also the control-trial math: Wilson's interval against chance."""

from __future__ import annotations

import hashlib
import re

import pytest
import torch

from saeq.jobs.label import sample_feature
from saeq.jobs.label_controls import own_vs_other_trials, run_controls
from saeq.ml.control_trials import control_result, planted_trials
from saeq.ml.explainers import EndpointJudge
from saeq.ml.features import FeatureIndex
from saeq.ml.llm import ChatEndpoint
from saeq.specs import LabelSpec, TrainedSae
from saeq.specs.label import JUDGE_UNCALIBRATED

FRUITS = ["apple", "banana", "cherry", "mango", "pear", "plum", "grape", "peach"]
VEHICLES = ["truck", "bus", "tram", "bicycle", "van", "taxi", "ferry", "scooter"]
SENTENCES = [
    "after lunch we saw a {} near the river and then walked home slowly",
    "every morning the old farmer looked at the {} before going back inside",
    "people talked about the {} during dinner while rain fell outside again",
    "nobody expected such a large {} in the quiet village market that summer",
]
CATEGORY = {"fruit": set(FRUITS), "vehicles": set(VEHICLES)}


def _index():
    """60 contexts of 12 words: feature 0 fires on the fruit word of contexts 0..19, feature 1 on
    the vehicle word of 20..39; 40..59 hold other words. Token ids are word ids."""
    fillers = ["stone", "cloud", "letter", "garden", "window", "candle", "ladder", "pillow"]
    things = (
        [FRUITS[i % 8] for i in range(20)] + [VEHICLES[i % 8] for i in range(20)] + [fillers[i % 8] for i in range(20)]
    )
    words = [SENTENCES[c % 4].format(w).split()[:12] for c, w in enumerate(things)]
    vocab = sorted({w for ws in words for w in ws})
    ids = torch.tensor([[vocab.index(w) for w in ws] for ws in words])
    acts = torch.zeros(60, 12, 2)
    for c, ws in enumerate(words):
        for t, w in enumerate(ws):
            acts[c, t, 0] = float(w in FRUITS) * (1 + c / 10)
            acts[c, t, 1] = float(w in VEHICLES) * (1 + c / 10)
    docs = torch.arange(60).repeat_interleave(12).view(60, 12)
    index = FeatureIndex.from_dense(ids, docs, torch.zeros(60, 12, dtype=torch.bool), acts)
    return index, (lambda token_ids: [" " + vocab[i] for i in token_ids])


def _records():
    labels = {0: ("fruit", "Names of fruits."), 1: ("vehicles", "Names of vehicles.")}
    return [{"feature": f, "explainer": "openai:m", "label": lab, "description": d} for f, (lab, d) in labels.items()]


def _careful_judge(request: dict) -> str:
    """Reads the text: a concept fits when its words (a category's, or the planted word) are there;
    a marking fits when every marked word is one of them."""
    user = request["messages"][-1]["content"]
    concept_match, text_match = re.search(r"Concept: (.*?) \(", user), re.search(r"Text: (.*)", user)
    assert concept_match is not None and text_match is not None
    concept, text = concept_match.group(1), text_match.group(1)
    planted = re.fullmatch(r'the word "(\w+)"', concept)
    fitting = {planted.group(1)} if planted else CATEGORY.get(concept, set())
    if "marked" in user:
        marked = re.findall(r"<<(\w+)>>", text)
        return "Yes" if marked and all(w in fitting for w in marked) else "No"
    return "Yes" if fitting & set(re.findall(r"\w+", text)) else "No"


def _coin_judge(request: dict) -> str:
    """Answers by a hash of the question: at random as far as the truth goes, yet the same every run."""
    digest = hashlib.sha256(request["messages"][-1]["content"].encode()).digest()
    return "Yes" if digest[0] % 2 else "No"


def _spec() -> LabelSpec:
    return LabelSpec(
        sae=TrainedSae(job_id="0" * 32), n_explain_examples=4, n_score_examples=10, window_before=8, window_after=2
    )


def _controls(openai_server, responder):
    index, decode = _index()
    judge = EndpointJudge(ChatEndpoint(openai_server(responder).base_url, "j", api_key=None), "openai:j")
    controls = run_controls(index, [0, 1], _records(), _spec(), judge=judge, embedder=None, decode=decode)
    return {c.scorer: c for c in controls}


def test_planted_windows_hold_the_word_and_the_others_do_not():
    index, decode = _index()
    spec = _spec()
    trials = planted_trials(index, decode, before=spec.window_before, after=spec.window_after, seed=spec.seed)
    words = {t.label.label for t in trials}
    assert len(words) == 4 and len(trials) >= 4 * 4
    for t in trials:
        planted = re.fullmatch(r'the word "(\w+)"', t.label.label)
        assert planted is not None
        word = planted.group(1)
        fits, misfits = "".join(decode(t.fits.token_ids)).split(), "".join(decode(t.misfits.token_ids)).split()
        assert word in fits and word not in misfits
        assert [w == word for w in fits] == [a > 0 for a in t.fits.acts]  # the marks fall on the word


def test_a_careful_judge_passes_its_controls(openai_server):
    controls = _controls(openai_server, _careful_judge)
    assert set(controls) == {"detection", "fuzzing"}
    det, fuzz = controls["detection"], controls["fuzzing"]
    assert det.calibrated and det.flag is None and det.accuracy.value == 1.0 and det.accuracy.low > 0.9
    assert det.by_kind["own_vs_other"].n == 8 and det.by_kind["planted"].n == det.accuracy.n - 8
    assert fuzz.calibrated and fuzz.accuracy.value == 1.0 and set(fuzz.by_kind) == {"planted"}
    assert det.judge == "openai:j" and det.accuracy.unit == "trials" and det.accuracy.method == "wilson"


@pytest.mark.parametrize("responder", [_coin_judge, lambda request: "Yes"], ids=["coin", "always-yes"])
def test_a_judge_that_cannot_tell_is_flagged_uncalibrated(openai_server, responder):
    controls = _controls(openai_server, responder)
    for c in controls.values():
        assert not c.calibrated and c.flag is not None and c.flag.startswith(JUDGE_UNCALIBRATED)
        assert c.accuracy.low <= 0.5 <= c.accuracy.high
    if responder is not _coin_judge:  # the same answer to every question: exactly half right
        assert controls["detection"].accuracy.value == 0.5


def test_control_math_is_wilson_against_chance():
    # 28 of 40: Wilson [0.546, 0.819], above chance; 26 of 40: [0.495, 0.779], not above it.
    above = control_result("detection", "j", ["planted"] * 40, [True] * 28 + [False] * 12)
    assert above.calibrated and round(above.accuracy.low, 3) == 0.546 and round(above.accuracy.high, 3) == 0.819
    reaches = control_result("detection", "j", ["planted"] * 40, [True] * 26 + [False] * 14)
    assert not reaches.calibrated and round(reaches.accuracy.low, 3) == 0.495
    assert "0.650 [0.495, 0.779] (n=40 trials)" in str(reaches.flag)
    below = control_result("fuzzing", "j", ["planted"] * 40, [False] * 40)  # always wrong: no judge either
    assert not below.calibrated and below.accuracy.high < 0.5
    kinds = control_result("detection", "j", ["own_vs_other"] * 10 + ["planted"] * 10, [True] * 10 + [False] * 10)
    assert (kinds.by_kind["own_vs_other"].value, kinds.by_kind["planted"].value) == (1.0, 0.0)
    empty = control_result("embedding", "e", [], [])
    assert not empty.calibrated and "no control trial" in str(empty.flag)


def test_a_feature_firing_in_every_context_still_gets_own_label_trials():
    """Silence is asked of the other feature's window, not its whole context: the most active
    features fire in nearly every context."""
    index, _ = _index()
    C, T = index.token_ids_CT.shape
    acts = torch.zeros(C, T, 3)
    for f in (0, 1):
        pos, vals = index.activations(f)
        acts.view(-1, 3)[pos, f] = vals
    acts[:, T - 1, 2] = 1.0  # feature 2: the last word of every context
    dense = FeatureIndex.from_dense(index.token_ids_CT, index.doc_ids_CT, index.sinks_CT, acts)
    records = [*_records(), {"feature": 2, "explainer": "openai:m", "label": "last words", "description": "Ends."}]
    samples = [sample_feature(dense, f, _spec()) for f in (0, 1, 2)]
    trials = [t for t in own_vs_other_trials(samples, records, dense) if t.label.label == "last words"]
    assert len(trials) == 2
    for t in trials:
        assert t.misfits.start + len(t.misfits.token_ids) < T  # a window of feature 0 or 1 that stops short of it
