"""The FastAPI application: `create_app(settings)` wires settings, database, storage and routes."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry

from services.api import console_site, docs_site, guards, openapi, redaction
from services.api.metrics import (
    DEFAULT_METRIC_SOURCES,
    DatabaseCollector,
    HttpMetrics,
    MetricsMiddleware,
    MetricSource,
)
from services.api.problems import BodyLimit, validation_problem
from services.api.routes import datasets, health, jobs, objects
from services.api.settings import ApiSettings
from services.common import dispatch
from services.common.db import dispose, make_read_session_factory, make_session_factory
from services.common.quotas import QuotaExceeded
from services.common.storage import InvalidKey, ObjectNotFound, StorageError, make_storage

log = logging.getLogger(__name__)

DESCRIPTION = """Expand small labelled image datasets with Diff-II synthetic images.

Upload a dataset (`POST /v1/datasets`), start a job (`POST /v1/jobs`), poll it
(`GET /v1/jobs/{id}`) and download the archive (`GET /v1/jobs/{id}/archive`).
Every `/v1` call needs `Authorization: Bearer <api key>`.
"""


def _streams_its_body(scope: dict) -> bool:
    """The upload reads its multipart body as a stream, under the upload cap (services.api.upload)."""
    return scope["method"] == "POST" and scope["path"] == "/v1/datasets"


def create_app(
    settings: ApiSettings | None = None, *, metric_sources: list[MetricSource] | None = None
) -> FastAPI:
    settings = settings or ApiSettings()
    settings.ensure_home()
    session_factory = make_session_factory(settings)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        redaction.install()
        yield
        dispose(session_factory)

    app = FastAPI(
        title="diffii",
        version="0.1.0",
        description=DESCRIPTION,
        docs_url=None,  # docs_site: local assets under the console's policy
        redoc_url=None,
        lifespan=lifespan,
        # operationId = the endpoint's name (create_job, list_datasets...): what a generated
        # client names its functions.
        generate_unique_id_function=lambda route: route.name,
    )

    app.state.settings = settings
    app.state.session_factory = session_factory
    app.state.read_session_factory = make_read_session_factory(session_factory)
    app.state.storage = make_storage(settings)
    # Job creation sends its first task to this app's broker, not whatever the environment names.
    dispatch.configure(settings)

    registry = CollectorRegistry()
    sources = metric_sources or DEFAULT_METRIC_SOURCES
    registry.register(DatabaseCollector(app.state.session_factory, sources, settings.metrics_cache_seconds))
    app.state.metrics_registry = registry
    app.add_middleware(BodyLimit, limit=settings.max_json_bytes, exempt=_streams_its_body)
    guards.install(app, settings)  # rate limit, no key in a URL, HEAD, /v1 headers, relative redirects
    app.add_middleware(MetricsMiddleware, metrics=HttpMetrics(registry))

    for module in (datasets, jobs, objects, health):
        app.include_router(module.router)
    openapi.install(app, settings)
    console_site.install(app)
    docs_site.install(app)

    app.add_exception_handler(RequestValidationError, validation_problem)

    @app.exception_handler(ObjectNotFound)
    async def _object_missing(_request: Request, exc: ObjectNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_404_NOT_FOUND)

    @app.exception_handler(QuotaExceeded)
    async def _over_quota(_request: Request, exc: QuotaExceeded) -> JSONResponse:
        body = {"detail": str(exc), "limit": exc.limit, "limit_value": exc.value, "requested": exc.requested}
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.exception_handler(InvalidKey)
    async def _bad_key(_request: Request, exc: InvalidKey) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_400_BAD_REQUEST)

    @app.exception_handler(StorageError)
    async def _storage_down(_request: Request, exc: StorageError) -> JSONResponse:
        log.error("storage error: %s", exc)
        return JSONResponse(
            {"detail": f"object storage failed: {exc}"}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE
        )

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, HTTPException):  # pragma: no cover - FastAPI handles these first
            raise exc
        log.exception("unhandled error")
        return JSONResponse(
            {"detail": "internal server error"}, status_code=status.HTTP_500_INTERNAL_SERVER_ERROR
        )

    return app
