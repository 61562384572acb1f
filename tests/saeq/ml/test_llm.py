"""ChatEndpoint against a real OpenAI-protocol server on loopback, through the real `openai` client."""

import threading
import time

import pytest

from saeq.ml.llm import ChatEndpoint, EndpointError, TokenBudgetExhausted
from saeq.platform.store import LocalStore
from saeq_worker.resolve import StoreResponseCache as ResponseCache
from tests.servers import free_port

MODEL = "judge-7b"


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def echo(request: dict) -> str:
    return "label: " + request["messages"][-1]["content"]


def endpoint(srv, **kw) -> ChatEndpoint:
    return ChatEndpoint(srv.base_url, MODEL, api_key=kw.pop("api_key", None), timeout_s=5, **kw)


def test_complete_returns_the_reply_and_the_cache_spares_the_server(openai_server, tmp_path):
    srv = openai_server(lambda req: "  Dates in the 1800s.\n")
    store = LocalStore(tmp_path)
    llm = endpoint(srv, cache=ResponseCache(store))
    assert llm.complete(ask("explain feature 3"), max_tokens=20) == "Dates in the 1800s."
    assert srv.requests[0]["model"] == MODEL and srv.requests[0]["temperature"] == 0.0
    assert llm.complete(ask("explain feature 3"), max_tokens=20) == "Dates in the 1800s."
    assert len(srv.requests) == 1 and llm.cache_hits == 1

    again = endpoint(srv, cache=ResponseCache(store))  # a later job, same store
    assert again.complete(ask("explain feature 3"), max_tokens=20) == "Dates in the 1800s."
    assert len(srv.requests) == 1 and again.tokens_used == 0
    assert again.complete(ask("explain feature 3"), max_tokens=21) == "Dates in the 1800s."
    assert len(srv.requests) == 2, "another max_tokens is another request"
    assert len(store.list("cache/llm/")) == 2


@pytest.mark.parametrize("logprobs, p_yes, p_no", [(True, 0.9, 0.1), (False, 1.0, 0.0)])
def test_yes_probability(openai_server, tmp_path, logprobs, p_yes, p_no):
    srv = openai_server(lambda req: "Yes." if "Paris" in req["messages"][-1]["content"] else "no", logprobs=logprobs)
    llm = endpoint(srv, cache=ResponseCache(LocalStore(tmp_path)))
    assert llm.yes_probability(ask("Is Paris in France?")) == pytest.approx(p_yes)
    assert llm.yes_probability(ask("Is Rome in France?")) == pytest.approx(p_no)
    assert srv.requests[0]["max_tokens"] == 1 and srv.requests[0]["logprobs"] is True
    assert llm.yes_probability(ask("Is Paris in France?")) == pytest.approx(p_yes)
    assert len(srv.requests) == 2


def test_an_answer_that_is_not_yes_or_no_is_quoted(openai_server):
    llm = endpoint(openai_server(lambda req: "Perhaps"))
    with pytest.raises(EndpointError, match="'Perhaps', not yes or no") as e:
        llm.yes_probability(ask("Is it?"))
    assert e.value.code == "endpoint_error" and e.value.field == "spec.endpoint"


def test_a_failing_server_is_retried_then_reported(openai_server):
    srv = openai_server(
        lambda req: (500, {"error": {"message": "CUDA out of memory on the judge", "type": "server_error"}})
    )
    llm = endpoint(srv, max_retries=1)
    with pytest.raises(EndpointError) as e:
        llm.complete(ask("hi"), max_tokens=5)
    assert len(srv.requests) == 2
    msg = str(e.value)
    assert "HTTP 500" in msg and "CUDA out of memory on the judge" in msg
    assert srv.base_url in msg and MODEL in msg


def test_a_long_error_body_is_clipped(openai_server):
    llm = endpoint(openai_server(lambda req: (400, {"error": {"message": "x" * 5000}})))
    with pytest.raises(EndpointError, match="HTTP 400") as e:
        llm.complete(ask("hi"), max_tokens=5)
    assert len(str(e.value)) < 600


def test_a_wrong_key_is_refused(openai_server):
    srv = openai_server(echo, require_key="sk-right")
    with pytest.raises(EndpointError, match="refused the API key.*Incorrect API key"):
        endpoint(srv, api_key="sk-wrong").complete(ask("hi"), max_tokens=5)
    assert len(srv.requests) == 1, "a refused key is not retried"
    assert endpoint(srv, api_key="sk-right").complete(ask("hi"), max_tokens=5) == "label: hi"


def test_an_unreachable_endpoint():
    llm = ChatEndpoint(f"http://127.0.0.1:{free_port()}/v1", MODEL, api_key=None, max_retries=0)
    with pytest.raises(EndpointError, match="cannot be reached.*ConnectError"):
        llm.complete(ask("hi"), max_tokens=5)


def test_a_slow_endpoint_times_out(openai_server):
    srv = openai_server(lambda req: time.sleep(1) or "late")
    llm = ChatEndpoint(srv.base_url, MODEL, api_key=None, timeout_s=0.2, max_retries=0)
    with pytest.raises(EndpointError, match="no answer within 0.2 s"):
        llm.complete(ask("hi"), max_tokens=5)


def test_a_malformed_completion(openai_server):
    llm = endpoint(openai_server(lambda req: (200, {"result": "Yes"})))
    with pytest.raises(EndpointError, match="malformed chat completion"):
        llm.yes_probability(ask("Is it?"))


def test_the_token_budget_stops_requests(openai_server):
    srv = openai_server(echo)  # usage: prompt words + reply words
    llm = endpoint(srv, token_budget=10)
    llm.complete(ask("one two three"), max_tokens=50)  # 3 + 4 tokens
    llm.complete(ask("four five six"), max_tokens=50)  # 14 >= 10 now
    assert llm.tokens_used == 14
    with pytest.raises(TokenBudgetExhausted, match="token budget of 10 spent.*2 requests") as e:
        llm.complete(ask("seven"), max_tokens=50)
    assert e.value.code == "token_budget_exhausted" and len(srv.requests) == 2


def test_batches_keep_their_order_and_run_concurrently(openai_server):
    in_flight, peak, lock = [0], [0], threading.Lock()

    def slow_echo(request):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.05)
        with lock:
            in_flight[0] -= 1
        return echo(request)

    srv = openai_server(slow_echo)
    llm = endpoint(srv, max_concurrency=4)
    texts = [f"w{i}" for i in range(12)]
    assert llm.complete_batch([ask(t) for t in texts], max_tokens=5) == [f"label: {t}" for t in texts]
    assert peak[0] > 1
    questions = [ask("yes" if i % 3 else "no") for i in range(7)]
    judge = endpoint(openai_server(lambda req: req["messages"][-1]["content"]))
    assert judge.yes_probability_batch(questions) == pytest.approx([0.9 if i % 3 else 0.1 for i in range(7)])


def test_a_batch_raises_the_first_failure(openai_server):
    srv = openai_server(lambda req: "Maybe" if req["messages"][-1]["content"] == "q2" else "yes")
    with pytest.raises(EndpointError, match="'Maybe'"):
        endpoint(srv).yes_probability_batch([ask(f"q{i}") for i in range(5)])
