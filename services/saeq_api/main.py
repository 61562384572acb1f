"""The saeq API: `uvicorn saeq_api.main:app` (settings from SAEQ_* variables)."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from http import HTTPStatus
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from kombu.exceptions import OperationalError
from prometheus_client import CollectorRegistry
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.exceptions import HTTPException as StarletteHTTPException

import saeq
from saeq.errors import StoreError
from saeq.platform.dispatch import make_celery, sender, waiting_dispatches
from saeq.platform.fair_share import SchedulingPolicy, publish_policy
from saeq.platform.registry import Registry, after_finish
from saeq.platform.scheduler import schedule
from saeq.platform.settings import open_store
from saeq.specs import load_plugins
from saeq_api.deps import Services
from saeq_api.limits import BodySizeLimit, body_limits
from saeq_api.metrics import CachedScrape, make_registry
from saeq_api.routes import admin, browser, compare, contrast, files, inspect, jobs, live, uploads
from saeq_api.schemas import PROBLEM_JSON
from saeq_api.settings import ApiSettings
from saeq_api.web import SecurityHeaders, docs_router

load_plugins()  # SAEQ_PLUGINS: SAE architectures, before any spec is validated or the schema built
log = logging.getLogger("saeq.api")


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        settings.require_signing_key("API")  # InsecureSettings: uvicorn exits with its message
        registry = Registry.from_url(
            settings.redis_url,
            max_attempts=settings.max_attempts,
            lease_ttl_s=settings.lease_ttl_s,
            retry_s=settings.redis_retry_s,
        )
        celery = make_celery(settings)
        svc = Services(settings, registry, open_store(settings), celery, sender(celery))
        registry.teams.set_default_quota(settings.default_quota)
        registry.spec_store = svc.store  # specs over registry.INLINE_SPEC_BYTES live there
        registry.set_job_retention(settings.job_retention_s)
        publish_policy(
            registry.r,
            SchedulingPolicy(
                half_life_s=settings.fair_share_half_life_s,
                min_run_s=settings.preempt_min_run_s,
                max_preemptions=settings.max_preemptions,
            ),
        )
        if settings.bootstrap_admin_key is not None:
            registry.teams.ensure_key(
                settings.bootstrap_admin_key.get_secret_value(),
                "admin",
                "admin",
                "bootstrap (SAEQ_BOOTSTRAP_ADMIN_KEY)",
            )
        app.state.services = svc
        app.state.metrics = CachedScrape([http_metrics, make_registry(registry)], settings.metrics_cache_s)
        reaper = asyncio.create_task(_reap_forever(svc))
        try:
            yield
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            registry.r.close()

    # /docs is Swagger UI from this origin (saeq_api.web); ReDoc would load from a CDN.
    app = FastAPI(
        title="saeq",
        version=saeq.__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        description="Queue sparse-autoencoder experiments: harvest, train, label, evaluate, steer.",
    )
    # HTTP request metrics, labelled by route template (never a raw path: no job ids in labels),
    # exported by the same protected /metrics as the job figures.
    http_metrics = CollectorRegistry()
    Instrumentator(registry=http_metrics, excluded_handlers=["/metrics"]).instrument(app)
    app.add_middleware(BodySizeLimit, **body_limits(settings))
    app.add_middleware(SecurityHeaders)  # outermost: a 413 gets them too
    app.include_router(jobs.router)
    app.include_router(compare.router)
    app.include_router(uploads.router)
    app.include_router(files.router)
    app.include_router(live.router)
    app.include_router(inspect.router)
    app.include_router(contrast.router)
    app.include_router(browser.router)
    app.include_router(admin.router)
    app.include_router(docs_router)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        # FastAPI's usual 422 body, plus a dotted `field` a person can read ("spec.max_tokens").
        errors, found = [], exc.errors()
        # The first few, each cut short: a 1 MB body can hold 100,000 errors, or a 1 MB tag.
        for e in found[:_MAX_ERRORS]:
            loc = [str(p)[:_MAX_ERROR_CHARS] for p in e["loc"] if p not in ("body",)]
            # Drop union branch names; a tag is never the last part (a field follows it), while a
            # field may share a tag's name (ImportedSae's `path`).
            loc = [p for i, p in enumerate(loc) if not (p in _UNION_TAGS and i + 1 < len(loc))]
            errors.append(
                {
                    "loc": [p if isinstance(p, int) else str(p)[:_MAX_ERROR_CHARS] for p in e["loc"]],
                    "field": ".".join(loc),
                    "msg": e["msg"][:_MAX_ERROR_CHARS],
                    "type": e["type"],
                }
            )
        if len(found) > _MAX_ERRORS:
            errors.append(
                {
                    "loc": [],
                    "field": "",
                    "type": "too_many_errors",
                    "msg": f"and {len(found) - _MAX_ERRORS:,} more errors",
                }
            )
        return problem(request, 422, errors)

    @app.exception_handler(redis.ConnectionError)
    @app.exception_handler(redis.TimeoutError)
    @app.exception_handler(OperationalError)
    async def _redis_unreachable(request: Request, exc: Exception):
        # Raised once the registry's retries (settings.redis_retry_s) or Celery's publish
        # retries are spent: Redis is down for longer than a restart takes. 503, so clients retry.
        log.warning("%s %s: Redis unreachable: %s", request.method, request.url.path, exc)
        return problem(
            request,
            503,
            f"the job registry and broker (Redis) did not answer for {settings.redis_retry_s:g} s; "
            "retry in a few seconds (a submit retried with the same Idempotency-Key never creates a second job)",
            headers={"Retry-After": str(_RETRY_AFTER_S)},
        )

    @app.exception_handler(StoreError)
    async def _store_failed(request: Request, exc: StoreError):
        # Not found and already-exists are answered by the routes; what reaches here is the
        # store itself failing (S3 unreachable past its retries, a directory not writable).
        log.error("%s %s: %s", request.method, request.url.path, exc.message)
        return problem(request, 503, exc.message, headers={"Retry-After": str(_RETRY_AFTER_S)}, code=exc.code)

    # --- part C: RFC 9457 problem bodies for every HTTPException (routes' 4xx, unknown paths) ---
    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return problem(request, exc.status_code, exc.detail, headers=exc.headers)

    def _openapi_with_problems() -> dict:
        # FastAPI documents its own 422 as application/json HTTPValidationError; ours is a problem.
        if app.openapi_schema is None:
            doc = _default_openapi()
            for ops in doc["paths"].values():
                for op in ops.values():
                    if "HTTPValidationError" in str(op.get("responses", {}).get("422")):  # not a route's own
                        op["responses"]["422"] = {
                            "description": "Invalid request: `detail` (and `errors`) name the field.",
                            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
                        }
            app.openapi_schema = doc
        return app.openapi_schema

    _default_openapi = app.openapi
    app.openapi = _openapi_with_problems  # type: ignore[method-assign]
    # --- end part C ---

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        token = settings.metrics_token
        if token is not None:
            scheme, _, given = request.headers.get("authorization", "").partition(" ")
            if not (
                scheme.lower() == "bearer"
                and hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode())
            ):
                return problem(
                    request,
                    401,
                    "metrics need `Authorization: Bearer <token>`, the API's SAEQ_METRICS_TOKEN",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return Response(app.state.metrics(), media_type="text/plain; version=0.0.4")

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict:
        return {"ok": True, "version": saeq.__version__}

    @app.get("/readyz", tags=["health"])
    def readyz(request: Request) -> dict:
        request.app.state.services.registry.r.ping()
        return {"ok": True}

    return app


_RETRY_AFTER_S = 5


def problem(request: Request, status: int, detail: Any, *, headers=None, **extra: Any) -> JSONResponse:
    """An RFC 9457 problem body. `detail` stays what it always was (a sentence, or the list of
    {loc, field, msg, type} naming each field at fault, which `errors` repeats), so old clients
    that read `detail` keep working."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extra,
    }
    if isinstance(detail, list):
        body["errors"] = detail
    return JSONResponse(status_code=status, content=body, headers=headers, media_type=PROBLEM_JSON)


_MAX_ERRORS = 20
_MAX_ERROR_CHARS = 300
_UNION_TAGS = {
    "harvest",
    "train",
    "label",
    "evaluate",
    "steer",
    "builtin",
    "hf",
    "upload",
    "job",
    "path",
    "local",
    "openai",
    "metadata",
    "embedding",
}


async def _reap_forever(svc: Services) -> None:
    """Requeue (or fail) running jobs whose worker stopped sending heartbeats."""
    while True:
        await asyncio.sleep(svc.settings.reap_every_s)
        try:
            await asyncio.to_thread(_reap_once, svc)
        except Exception:
            log.exception("reaper pass failed")


def _reap_once(svc: Services) -> None:
    if not svc.registry.try_lock("reaper", ttl_s=svc.settings.reap_every_s * 0.9):
        return  # another API replica reaps this round
    s, registry = svc.settings, svc.registry
    resend, ended = registry.reap(
        # A worker stops a job at its limit by itself; this ends one whose worker hangs.
        time_limit_grace_s=5 * s.heartbeat_s,
        # Longer than a worker takes from receiving a message to claiming the job: importing
        # torch on a busy node, or waiting out a dead predecessor's lease (running.run_job).
        lost_after_s=max(30.0, 2 * s.lease_ttl_s + 2),
        waiting=lambda: waiting_dispatches(registry.r),
    )
    for job, dispatch_id in resend:
        log.warning("job %s sent again (attempt %d to come)", job["id"], job["attempts"] + 1)
        svc.send(job, dispatch_id)
    # Jobs ended here, and ended recently by processes that may have died before starting the
    # jobs that waited for them: starting those twice is harmless.
    for job_id in dict.fromkeys([*ended, *registry.recently_ended()]):
        after_finish(registry, job_id, svc.send)
    # A slot freed by a process that died between ending a job and starting the next, a worker
    # that appeared (its advertised slots are capacity), or a preemption the policy now allows.
    schedule(svc.registry, svc.send)
    registry.sweep_expired()  # index entries (and stored specs) of records that expired


app = create_app()
