"""How the `saeq` command fails: one line on stderr that says what went wrong and what to do, and
a non-zero exit; the Python traceback only with SAEQ_DEBUG=1.

Every command runs inside `SaeqGroup.invoke`, so a refused connection, a timeout or any refusal
of the API (401, 403, 404, 422, 429, 5xx) is turned into that line in one place.
"""

from __future__ import annotations

import os

import click
import httpx

from saeq.client.client import ApiError, JobFailed, format_detail

DEBUG_ENV = "SAEQ_DEBUG"


class CliError(click.ClickException):
    """A failure shown as `Error: <one line>`, exit code 1."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))  # one line, whatever the API's detail holds


class SaeqGroup(click.Group):
    """The root group: the errors of any subcommand become a CliError."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as e:
            if os.environ.get(DEBUG_ENV) == "1":
                raise
            raise explain(e, ctx) from None


def explain(error: Exception, ctx: click.Context) -> CliError:
    """The one-line message for `error`, with the fix a user can make."""
    obj = ctx.obj or {}
    url = obj.get("resolved_url") or obj.get("url") or "the configured URL"
    if isinstance(error, httpx.TimeoutException):
        return CliError(
            f"the saeq API at {url} did not answer in time ({_reason(error)}): it may be overloaded or "
            "stuck; try again, or check its log"
        )
    if isinstance(error, httpx.TransportError):
        return CliError(
            f"cannot reach the saeq API at {url} ({_reason(error)}): start it with `saeq up` or pass --url / SAEQ_URL"
        )
    if isinstance(error, ApiError):
        return CliError(_api_message(error, url, has_key=bool(obj.get("resolved_key"))))
    if isinstance(error, JobFailed | TimeoutError):
        return CliError(str(error))
    if isinstance(error, httpx.HTTPStatusError):  # an artifact's download URL refused
        return CliError(f"download failed: HTTP {error.response.status_code} from {error.request.url}")
    return CliError(f"unexpected error: {type(error).__name__}: {error} (set {DEBUG_ENV}=1 for the traceback)")


def _api_message(e: ApiError, url: str, *, has_key: bool) -> str:
    status, detail = e.status, format_detail(e.detail)
    if status == 401:
        if not has_key:
            return (
                f"the saeq API at {url} needs an API key (HTTP 401: {detail}): pass --api-key or set "
                "SAEQ_API_KEY (on the machine that ran `saeq up`, its admin key is found by itself)"
            )
        return (
            f"the saeq API at {url} refused the API key (HTTP 401: {detail}): pass your team's key "
            "with --api-key or SAEQ_API_KEY (an admin makes one with `saeq keys create TEAM`)"
        )
    if status == 403:
        return f"not allowed (HTTP 403: {detail}): this needs an admin key, or a key of the team that owns it"
    if status == 404:
        return f"not found (HTTP 404: {detail}): check the id (`saeq status` lists your jobs)"
    if status in (400, 409, 422):
        return f"the API refused the request (HTTP {status}): {detail}"
    if status == 429:
        return f"too many requests or over quota (HTTP 429: {detail}): wait and try again, or see `saeq whoami`"
    if status >= 500:
        return f"the saeq API at {url} failed (HTTP {status}: {detail}): try again; its log says why"
    return f"HTTP {status}: {detail}"


def _reason(error: httpx.TransportError) -> str:
    text = str(error) or type(error).__name__
    if "refused" in text.lower():
        return "connection refused"
    return text
