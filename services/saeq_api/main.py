"""The saeq API: `uvicorn saeq_api.main:app` (settings from SAEQ_* variables)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

import saeq
from saeq.config import open_store
from saeq.dispatch import make_celery, sender
from saeq.registry import Registry, after_finish
from saeq_api.deps import Services
from saeq_api.metrics import make_registry, scrape
from saeq_api.routes import browser, files, jobs, live, uploads
from saeq_api.settings import ApiSettings

log = logging.getLogger("saeq.api")


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    settings = settings or ApiSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        registry = Registry.from_url(settings.redis_url, max_attempts=settings.max_attempts,
                                     lease_ttl_s=settings.lease_ttl_s)
        celery = make_celery(settings)
        svc = Services(settings, registry, open_store(settings), celery, sender(celery))
        app.state.services = svc
        app.state.metrics = make_registry(registry)
        reaper = asyncio.create_task(_reap_forever(svc))
        try:
            yield
        finally:
            reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reaper
            registry.r.close()

    app = FastAPI(title="saeq", version=saeq.__version__, lifespan=lifespan,
                  description="Queue sparse-autoencoder experiments: harvest, train, label, "
                              "evaluate, steer.")
    app.include_router(jobs.router)
    app.include_router(uploads.router)
    app.include_router(files.router)
    app.include_router(live.router)
    app.include_router(browser.router)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        # FastAPI's usual 422 body, plus a dotted `field` a person can read ("spec.max_tokens").
        errors = []
        for e in exc.errors():
            loc = [str(p) for p in e["loc"] if p not in ("body",)]
            # Drop union branch names; a tag is never the last part (a field follows it), while a
            # field may share a tag's name (ImportedSae's `path`).
            loc = [p for i, p in enumerate(loc) if not (p in _UNION_TAGS and i + 1 < len(loc))]
            errors.append({"loc": e["loc"], "field": ".".join(loc), "msg": e["msg"], "type": e["type"]})
        return JSONResponse(status_code=422, content={"detail": errors})

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(scrape(app.state.metrics), media_type="text/plain; version=0.0.4")

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict:
        return {"ok": True, "version": saeq.__version__}

    @app.get("/readyz", tags=["health"])
    def readyz(request: Request) -> dict:
        request.app.state.services.registry.r.ping()
        return {"ok": True}

    return app


_UNION_TAGS = {"harvest", "train", "label", "evaluate", "steer", "builtin", "hf", "upload", "job", "path",
               "local", "openai", "metadata", "embedding"}


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
    resend, ended = svc.registry.reap()
    for job, dispatch_id in resend:
        log.warning("job %s lost its worker; dispatching attempt %d", job["id"], job["attempts"] + 1)
        svc.send(job, dispatch_id)
    for job_id in ended:
        after_finish(svc.registry, job_id, svc.send)


app = create_app()
