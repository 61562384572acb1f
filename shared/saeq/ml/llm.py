"""An OpenAI-compatible chat endpoint (vLLM, a hosted API) as the labeller's explainer and judge.

Answers are cached by exact request (the worker keeps them in the object store), so a rerun pays
for no token twice.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, TypeVar

import openai

from saeq.errors import EndpointError, TokenBudgetExhausted

T = TypeVar("T")
R = TypeVar("R")

_YES = frozenset({"yes", "true", "1"})
_NO = frozenset({"no", "false", "0"})
_DETAIL_CHARS = 300


def request_digest(request: dict) -> str:
    """sha256 of the exact request body (model, messages, sampling params), not the base URL: the
    same model moved to another host still answers from the cache."""
    canonical = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class ResponseCache(Protocol):
    """Request -> response, shared by every job. The ML core does no I/O of its own: the worker
    hands in one kept in the object store (saeq_worker.resolve.StoreResponseCache)."""

    def get(self, request: dict) -> dict | None: ...

    def put(self, request: dict, response: dict) -> None:
        """Keep `response`; a second put of the same request (another worker asked too) is no error."""
        ...


class ChatEndpoint:
    """One model behind an OpenAI-compatible chat endpoint. Thread-safe: batches run concurrently.

    Retries with backoff (429, 5xx, connection errors) are the `openai` client's own.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None,
        timeout_s: float = 60,
        max_retries: int = 2,
        token_budget: int | None = None,
        cache: ResponseCache | None = None,
        temperature: float = 0.0,
        max_concurrency: int = 4,
    ):
        self.base_url = base_url
        self.model = model
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.token_budget = token_budget
        """Stop sending once this many tokens (prompt + completion) are used; None: no limit."""
        self.cache = cache
        self.temperature = temperature
        self.max_concurrency = max_concurrency
        self.tokens_used = 0
        """Tokens of real (non-cached) responses, as the server reports them."""
        self.requests_made = 0
        self.cache_hits = 0
        self._lock = threading.Lock()
        # Servers like vLLM need no key, but the client refuses to start without one.
        self.client = openai.OpenAI(
            base_url=base_url, api_key=api_key or "none", timeout=timeout_s, max_retries=max_retries
        )

    def complete(self, messages: list[dict], *, max_tokens: int) -> str:
        """The assistant's reply, stripped."""
        request = self._request(messages, max_tokens=max_tokens)
        if (hit := self._cached(request)) is not None:
            return hit["content"]
        content, _, usage = self._send(request)
        if not content:
            raise self._error(f"answered an empty message (usage {usage})")
        self._save(request, {"content": content, "usage": usage})
        return content

    def yes_probability(self, messages: list[dict]) -> float:
        """P(yes) of a yes/no question: from the first token's logprobs when the server gives them,
        else 1.0 or 0.0 from the answer's text."""
        request = self._request(messages, max_tokens=1, logprobs=True, top_logprobs=5)
        if (hit := self._cached(request)) is not None:
            return hit["yes_probability"]
        content, top, usage = self._send(request)
        p = _yes_share(top)
        if p is None:  # servers may ignore `logprobs`, or the top tokens hold neither answer
            p = self._parse_yes_no(content)
        self._save(request, {"content": content, "yes_probability": p, "usage": usage})
        return p

    def option_probabilities(self, messages: list[dict], options: list[str]) -> list[float]:
        """P(each option) of a one-word answer, renormalised: from the first token's logprobs when
        the server gives them, else all mass on the option the answer starts with."""
        request = self._request(messages, max_tokens=2, logprobs=True, top_logprobs=10)
        if (hit := self._cached(request)) is not None:
            return hit["option_probabilities"]
        content, top, usage = self._send(request)
        mass = [0.0] * len(options)
        for token, logprob in top:
            word = token.strip().rstrip(".!?,;:")
            if word in options:
                mass[options.index(word)] += math.exp(logprob)
        if sum(mass) == 0:
            word = (content or "").strip()
            first = next((o for o in options if word.startswith(o)), None)
            if first is None:
                raise self._error(f"answered {content!r}, none of {options}")
            mass[options.index(first)] = 1.0
        probs = [m / sum(mass) for m in mass]
        self._save(request, {"content": content, "option_probabilities": probs, "usage": usage})
        return probs

    def option_probability_batch(self, conversations: list[list[dict]], options: list[str]) -> list[list[float]]:
        return self._map(lambda m: self.option_probabilities(m, options), conversations)

    def complete_batch(self, conversations: list[list[dict]], *, max_tokens: int) -> list[str]:
        return self._map(lambda m: self.complete(m, max_tokens=max_tokens), conversations)

    def yes_probability_batch(self, conversations: list[list[dict]]) -> list[float]:
        return self._map(self.yes_probability, conversations)

    def _request(self, messages: list[dict], **params) -> dict:
        return {"model": self.model, "messages": messages, "temperature": self.temperature, **params}

    def _cached(self, request: dict) -> dict | None:
        hit = self.cache.get(request) if self.cache is not None else None
        if hit is not None:
            with self._lock:
                self.cache_hits += 1
        return hit

    def _save(self, request: dict, answer: dict) -> None:
        if self.cache is not None:
            self.cache.put(request, answer)

    def _send(self, request: dict) -> tuple[str | None, list[tuple[str, float]], dict]:
        """One real request -> (content, first token's top logprobs, usage); counts the tokens."""
        with self._lock:
            if self.token_budget is not None and self.tokens_used >= self.token_budget:
                raise TokenBudgetExhausted(
                    f"token budget of {self.token_budget} spent: {self.tokens_used} tokens used by "
                    f"{self.requests_made} requests to {self.model!r} at {self.base_url}"
                )
            self.requests_made += 1
        try:
            response = self.client.chat.completions.create(**request)
        except openai.APIStatusError as e:
            raise self._status_error(e) from e
        except openai.APITimeoutError as e:
            raise self._error(f"gave no answer within {self.timeout_s:g} s (tried {self.max_retries + 1} times)") from e
        except openai.APIConnectionError as e:
            cause = e.__cause__ or e
            raise self._error(
                f"cannot be reached (tried {self.max_retries + 1} times): {type(cause).__name__}: {_clip(str(cause))}"
            ) from e
        except openai.APIError as e:
            raise self._error(f"sent a response the client cannot read ({type(e).__name__}): {_clip(str(e))}") from e
        content, top, usage = self._parse(request, response)
        with self._lock:
            self.tokens_used += usage["total_tokens"]
        return content, top, usage

    def _parse(self, request: dict, response) -> tuple[str | None, list[tuple[str, float]], dict]:
        # Lenient parsing hands back whatever the server sent, a raw string or a dict with no
        # choices included; those must become errors the user can read, not AttributeErrors.
        try:
            choice = response.choices[0]
            content = choice.message.content
            content = content.strip() if isinstance(content, str) else None
            steps = choice.logprobs.content if choice.logprobs is not None else None
            top = [(t.token, float(t.logprob)) for t in steps[0].top_logprobs] if steps else []
        except (AttributeError, IndexError, TypeError, ValueError):
            raise self._error(f"sent a malformed chat completion: {_clip(str(response))}") from None
        usage = getattr(response, "usage", None)
        if usage is not None and isinstance(getattr(usage, "total_tokens", None), int):
            usage = {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
            }
        else:  # some servers omit usage; ~4 characters a token keeps the budget meaningful
            chars = len(json.dumps(request["messages"])) + len(content or "")
            usage = {"prompt_tokens": None, "completion_tokens": None, "total_tokens": chars // 4}
        return content, top, usage

    def _parse_yes_no(self, content: str | None) -> float:
        word = (content or "").strip().rstrip(".!?,;:").strip().lower()
        if word in _YES:
            return 1.0
        if word in _NO:
            return 0.0
        raise self._error(f"answered the judge's question with {content!r}, not yes or no")

    def _status_error(self, e: openai.APIStatusError) -> EndpointError:
        detail = _clip(_server_text(e.body) or e.message)
        if e.status_code == 401:
            return self._error(f"refused the API key (HTTP 401 {type(e).__name__}): {detail}")
        retried = (
            f", tried {self.max_retries + 1} times" if e.status_code in (408, 409, 429) or e.status_code >= 500 else ""
        )
        return self._error(f"answered HTTP {e.status_code} ({type(e).__name__}{retried}): {detail}")

    def _error(self, what: str) -> EndpointError:
        return EndpointError(f"chat endpoint {self.base_url} (model {self.model!r}) {what}", field="spec.endpoint")

    def _map(self, fn: Callable[[T], R], items: list[T]) -> list[R]:
        """`fn` over `items` on a few threads, in order; the first failure (in order) is raised
        and requests not yet started are dropped."""
        if len(items) <= 1 or self.max_concurrency <= 1:
            return [fn(x) for x in items]
        pool = ThreadPoolExecutor(min(self.max_concurrency, len(items)), thread_name_prefix="saeq-llm")
        try:
            futures = [pool.submit(fn, x) for x in items]
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _yes_share(top: list[tuple[str, float]]) -> float | None:
    """P(yes) / (P(yes) + P(no)) over top tokens (" Yes", "yes", "NO"...); None if neither shows."""
    p_yes = p_no = 0.0
    for token, logprob in top:
        word = token.strip().rstrip(".!?,;:").lower()
        if word in _YES:
            p_yes += math.exp(logprob)
        elif word in _NO:
            p_no += math.exp(logprob)
    return p_yes / (p_yes + p_no) if p_yes + p_no > 0 else None


def _server_text(body: object) -> str:
    """The server's own error message out of an error body ({"message": ...} in OpenAI's form)."""
    if isinstance(body, dict):
        message = body.get("message") or body.get("detail")
        return message if isinstance(message, str) else json.dumps(body)
    return "" if body is None else str(body)


def _clip(text: str) -> str:
    return text if len(text) <= _DETAIL_CHARS else text[:_DETAIL_CHARS] + "..."
