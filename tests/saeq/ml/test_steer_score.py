"""The AxBench-style steering score: the harmonic mean of three 0-2 ratings by a (tiny, local) judge,
each aspect judged on what it names only, and a mean over prompts with a bootstrap interval."""

from __future__ import annotations

import math

import pytest

from saeq.ml.explainers import LocalLLM
from saeq.ml.steer_score import RatedText, harmonic_score, rate_completions, steering_score


def test_the_harmonic_mean_is_pulled_down_by_the_poorest_aspect_and_zeroed_by_a_zero():
    assert harmonic_score(2.0, 2.0, 2.0) == pytest.approx(2.0)
    assert harmonic_score(2.0, 2.0, 0.5) == pytest.approx(3 / (1 / 2 + 1 / 2 + 1 / 0.5))
    assert harmonic_score(2.0, 2.0, 0.5) < (2.0 + 2.0 + 0.5) / 3
    assert harmonic_score(2.0, 0.0, 2.0) == 0.0


def test_a_judges_ratings_are_expectations_in_0_2_and_each_aspect_reads_only_its_own_inputs(tiny_llama):
    judge = LocalLLM(tiny_llama)
    text = "The bridge crosses the river near the old town."
    items = [
        RatedText("bridges", "Tell me about cities.", text),
        RatedText("music and songs", "Tell me about cities.", text),
        RatedText("bridges", "Write a poem about the sea.", text),
    ]
    a, other_concept, other_instruction = rate_completions(judge, items)
    for r in (a, other_concept, other_instruction):
        assert min(r.concept, r.instruction, r.fluency) >= 0 and max(r.concept, r.instruction, r.fluency) <= 2
        assert r.score == pytest.approx(harmonic_score(r.concept, r.instruction, r.fluency))
    # Fluency is judged on the text alone; the concept rating ignores the instruction and vice versa.
    assert a.fluency == pytest.approx(other_concept.fluency) == pytest.approx(other_instruction.fluency)
    assert a.concept != pytest.approx(other_concept.concept) and a.concept == pytest.approx(other_instruction.concept)
    assert a.instruction != pytest.approx(other_instruction.instruction)
    assert a.instruction == pytest.approx(other_concept.instruction)


def test_the_score_over_prompts_has_an_interval_around_it():
    est = steering_score([0.2, 1.5, 0.9, 1.1, 0.4, 1.8])
    assert est.value == pytest.approx(5.9 / 6) and est.n == 6 and est.unit == "prompts"
    assert est.low < est.value < est.high and est.low >= 0.2 and est.high <= 1.8
    same = steering_score([1.0, 1.0, 1.0])
    assert same.low == same.high == 1.0
    one = steering_score([1.0])
    assert math.isnan(one.low) and math.isnan(one.high)


def test_a_steer_job_with_a_judge_but_no_labels_is_refused_naming_the_judge():
    from saeq.specs import SteerSpec

    spec = {"sae": {"job_id": "a" * 32}, "prompts": ["Hi"], "interventions": [{"edits": [{"feature": 1}]}]}
    with pytest.raises(ValueError, match="judge") as e:
        SteerSpec.model_validate({**spec, "judge": {"backend": "local"}})
    assert "label_job" in str(e.value)
    assert SteerSpec.model_validate({**spec, "judge": {"backend": "local"}, "label_job": "b" * 32}).judge is not None


def test_an_endpoint_judge_rates_each_aspect_from_its_answer(openai_server):
    """An OpenAI-protocol judge (EndpointRater over ChatEndpoint): each rubric goes to the endpoint
    as a user message under a one-digit system line, and the digit it answers is the rating
    (all the mass on it: the server's top logprobs hold only that token)."""
    from saeq.ml.llm import ChatEndpoint
    from saeq.ml.steer_score import EndpointRater

    def answer(request: dict) -> str:
        user = request["messages"][-1]["content"]
        if user.startswith("Rate how clearly the text is about the concept"):
            return "2" if "volcano" in user.split("Text:")[1] else "0"
        return "1" if user.startswith("Rate how well the text answers") else "2"

    srv = openai_server(answer)
    judge = EndpointRater(ChatEndpoint(srv.base_url, "judge-model", api_key=None, max_retries=0))
    items = [
        RatedText("volcanoes", "Tell me a story.", "The volcano erupted at dawn."),
        RatedText("volcanoes", "Tell me a story.", "The cat slept all day."),
    ]
    on_topic, off_topic = rate_completions(judge, items)
    assert (on_topic.concept, on_topic.instruction, on_topic.fluency) == (2.0, 1.0, 2.0)
    assert on_topic.score == pytest.approx(harmonic_score(2.0, 1.0, 2.0))
    assert off_topic.concept == 0.0 and off_topic.score == 0.0  # AxBench: a 0 on any aspect is 0
    assert len(srv.requests) == 6 and all(r["messages"][0]["role"] == "system" for r in srv.requests)
