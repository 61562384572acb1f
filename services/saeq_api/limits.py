"""A cap on request bodies: 413 for one larger than its limit, told by Content-Length before the
app runs, or counted while it streams in (a chunked body declares no length)."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """Raised from `receive` once a body passes its limit. An HTTPException, so the app's own
    handlers answer it (FastAPI re-raises those while it reads a body, where it turns any other
    error into a 400)."""

    def __init__(self, limit: int, setting: str):
        super().__init__(
            413, detail=f"request body larger than {limit} bytes, this API's limit ({setting}) for this route"
        )


class BodySizeLimit:
    """Pure ASGI middleware: bodies up to `max_bytes`, or a path's own limit in `path_limits`
    (path -> (bytes, name of the setting)), which a 413's detail names."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        setting: str = "max_request_bytes",
        path_limits: Mapping[str, tuple[int, str]] = {},
    ):
        self.app = app
        self.default = (max_bytes, setting)
        self.path_limits = dict(path_limits)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, setting = self.path_limits.get(scope["path"].rstrip("/"), self.default)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _answer_413(send, BodyTooLarge(limit, setting), scope.get("path", ""))
            return

        received = 0
        response_started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit, setting)
            return message

        async def watching_send(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge as e:  # the app did not answer it itself (a route reading the stream raw)
            if response_started:
                raise
            await _answer_413(send, e, scope.get("path", ""))


MULTIPART_OVERHEAD_BYTES = 64 << 10
"""Room for an upload's multipart headers and boundaries around the file itself."""


def body_limits(settings) -> dict:
    """BodySizeLimit's arguments from ApiSettings: `max_request_bytes` everywhere, the upload
    route's own larger `max_upload_bytes` (which the route checks exactly, naming the file)."""
    return {
        "max_bytes": settings.max_request_bytes,
        "setting": "max_request_bytes",
        "path_limits": {"/v1/uploads": (settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES, "max_upload_bytes")},
    }


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length itself
    return None


async def _answer_413(send: Send, e: BodyTooLarge, path: str) -> None:
    import json

    # An RFC 9457 problem, as every other error the API answers (saeq_api.main.problem).
    problem = {"type": "about:blank", "title": "Content Too Large", "status": 413, "detail": e.detail, "instance": path}
    body = json.dumps(problem).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
