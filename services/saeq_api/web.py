"""What browsers get besides JSON: security headers on every answer, and the API docs (/docs)
served from this origin. The origin holds the user's API key (the feature browser keeps it in
localStorage), so it runs no script from anywhere else, inline or remote, and no other site may
frame it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
"""Scripts, styles, fetches only from this origin (no inline script); images also as data: URLs
(Swagger UI's icons); never inside another site's frame."""

SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),  # a JSON body or upload is never run as a script
    (b"x-frame-options", b"DENY"),  # frame-ancestors for browsers that predate it
    (b"referrer-policy", b"no-referrer"),  # addresses (signed links) never leak to other sites
]


class SecurityHeaders:
    """Pure ASGI middleware: SECURITY_HEADERS on every HTTP answer, errors included."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in SECURITY_HEADERS if h[0] not in names)]
            await send(message)

        await self.app(scope, receive, with_headers)


STATIC = Path(__file__).resolve().parent / "static"
_SWAGGER_FILES = {"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png"}
_DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>saeq API</title>
<link rel="icon" type="image/png" href="/docs/static/favicon-32x32.png">
<link rel="stylesheet" href="/docs/static/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script src="/docs/static/docs.js"></script>
</body>
</html>
"""

docs_router = APIRouter(include_in_schema=False)


def _swagger_dir() -> Path:
    # Swagger UI 5 (OpenAPI 3.1) as the PyPI package swagger-ui-py ships it; found, not imported
    # (its handlers import web frameworks).
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        raise HTTPException(
            404,
            detail="API docs need the PyPI package swagger-ui-py on the API "
            "(pip install 'saeq[api]'); the schema is at /openapi.json",
        )
    return Path(spec.submodule_search_locations[0]) / "static"


@docs_router.get("/docs")
def docs_page() -> HTMLResponse:
    _swagger_dir()
    return HTMLResponse(_DOCS_PAGE)


@docs_router.get("/docs/static/{name}")
def docs_asset(name: str) -> FileResponse:
    if name == "docs.js":
        return FileResponse(STATIC / "docs.js")
    if name not in _SWAGGER_FILES:
        raise HTTPException(404, detail="no such file")
    return FileResponse(_swagger_dir() / name, headers={"Cache-Control": "max-age=86400"})
