"""A real HTTP server speaking OpenAI's chat-completions protocol, on loopback, for tests.

A `responder(request_json)` decides each answer: the assistant's text, or (status, error body) to
play a failing endpoint. Tokens are whitespace-separated words, which is all the tests need.
"""

from __future__ import annotations

import itertools
import math
import socket
import threading
import time
from collections.abc import Callable

import uvicorn
from fastapi import Body, FastAPI, Header
from fastapi.responses import JSONResponse

from tests.servers import HOST

Responder = Callable[[dict], "str | tuple[int, dict]"]
_OPPOSITE = {"yes": "no", "no": "yes"}


class OpenAIServer:
    """`with OpenAIServer(lambda req: "Yes") as srv:` -> `srv.base_url` ends in /v1."""

    def __init__(
        self,
        responder: Responder,
        *,
        model: str = "saeq-test-model",
        logprobs: bool = True,
        require_key: str | None = None,
    ):
        self.responder = responder
        self.model = model
        """Listed by GET /v1/models; completions echo whatever model the request names."""
        self.logprobs = logprobs
        """Answer `logprobs: true` with top logprobs; False plays a server that ignores it."""
        self.require_key = require_key
        """Answer 401 unless the request carries `Authorization: Bearer {require_key}`."""
        self.requests: list[dict] = []
        """Every chat request body received, in order, failed ones included."""
        self._ids = itertools.count()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def app(self) -> FastAPI:
        app = FastAPI()

        # Plain `def`: FastAPI runs it on a thread pool, so a slow responder does not serialise
        # concurrent requests.
        @app.post("/v1/chat/completions")
        def chat(body: dict = Body(...), authorization: str | None = Header(None)):
            self.requests.append(body)
            if self.require_key is not None and authorization != f"Bearer {self.require_key}":
                return JSONResponse(
                    {
                        "error": {
                            "message": "Incorrect API key provided.",
                            "type": "invalid_request_error",
                            "param": None,
                            "code": "invalid_api_key",
                        }
                    },
                    status_code=401,
                )
            answer = self.responder(body)
            if isinstance(answer, tuple):
                status, error = answer
                return JSONResponse(error, status_code=status)
            return self.completion(body, answer)

        @app.get("/v1/models")
        def models():
            return {
                "object": "list",
                "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "saeq-tests"}],
            }

        return app

    def completion(self, body: dict, content: str) -> dict:
        """A ChatCompletion for `content`, cut to `max_tokens` words as a real server would."""
        words = content.split()
        limit = body.get("max_tokens") or body.get("max_completion_tokens")
        truncated = limit is not None and len(words) > limit
        if truncated:
            content = " ".join(words[:limit])
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
        completion_tokens = len(content.split())
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "length" if truncated else "stop",
            "logprobs": None,
        }
        if body.get("logprobs") and self.logprobs and content:
            # Real tokenizers split "Yes." into "Yes" and ".": the first token is the bare word.
            first = content.split()[0].rstrip(".!?,;:") or content.split()[0]
            choice["logprobs"] = {
                "content": [self.first_token_logprobs(first, body.get("top_logprobs") or 1)],
                "refusal": None,
            }
        return {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.model),
            "choices": [choice],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }

    @staticmethod
    def first_token_logprobs(token: str, n_top: int) -> dict:
        """The answer at p=0.9 and, for a yes/no answer, the other answer at p=0.1 (same case)."""
        other = _OPPOSITE.get(token.lower())
        if other is None:
            top = [(token, 0.0)]
        else:
            other = other.upper() if token.isupper() else other.capitalize() if token[0].isupper() else other
            top = [(token, math.log(0.9)), (other, math.log(0.1))]
        entries = [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top[:n_top]]
        return {**entries[0], "top_logprobs": entries}

    def __enter__(self) -> OpenAIServer:
        # Bound here and handed to uvicorn, so no other process can take the port in between.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, 0))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app(), log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=1
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name=f"openai-server-{self.port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the OpenAI test server exited during startup")
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError("the OpenAI test server was not ready after 10 s")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=5)
            self._server = self._thread = None
