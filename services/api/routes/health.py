"""Liveness, readiness (database, broker, storage) and Prometheus metrics; no API key needed."""

from __future__ import annotations

import concurrent.futures
import hmac
from collections.abc import Callable

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from services.api.schemas import HealthOut, NotReadyOut, ReadyOut
from services.api.settings import ApiSettings

router = APIRouter(tags=["health"])


def check_database(request: Request) -> None:
    with request.app.state.session_factory() as session:
        session.execute(text("SELECT 1"))


def check_broker(settings: ApiSettings) -> None:
    from kombu import Connection

    with Connection(settings.broker_url, connect_timeout=settings.readiness_timeout) as connection:
        connection.ensure_connection(
            max_retries=1, interval_start=0, interval_step=0, timeout=settings.readiness_timeout
        )


def check_storage(request: Request) -> None:
    request.app.state.storage.check()


def check_supervised_children(settings: ApiSettings) -> None:
    """Under `diffii up`: fails while a child (the worker) is down and waiting for its restart."""
    from services.cli.supervisor import read_state

    assert settings.supervisor_state is not None
    state = read_state(settings.supervisor_state)
    if state is None:
        raise RuntimeError("the supervisor wrote no state")
    down = {n: c for n, c in state["children"].items() if c["state"] != "running"}  # type: ignore[union-attr]
    if down:
        raise RuntimeError(
            "; ".join(
                f"{n} exited with {c['last_exit']}, restart {c['restarts']} in {c['restart_in']}s"
                for n, c in down.items()
            )
        )


@router.get("/healthz", response_model=HealthOut)
def healthz() -> dict[str, str]:
    """The process is up and serving (no dependency is checked)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=ReadyOut,
    responses={503: {"model": NotReadyOut, "description": "a dependency is down; the body says which"}},
)
def readyz(request: Request) -> JSONResponse:
    """Ready when the database, the broker and the object store all answer."""
    settings: ApiSettings = request.app.state.settings
    checks: dict[str, Callable[[], None]] = {
        "database": lambda: check_database(request),
        "broker": lambda: check_broker(settings),
        "storage": lambda: check_storage(request),
    }
    if settings.supervisor_state is not None:
        checks["children"] = lambda: check_supervised_children(settings)
    results: dict[str, str] = {}
    # In parallel and each under a deadline: a hung dependency must not hang the probe.
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=len(checks), thread_name_prefix="readyz")
    try:
        futures = {name: executor.submit(fn) for name, fn in checks.items()}
        for name, future in futures.items():
            try:
                future.result(timeout=settings.readiness_timeout + 1)
                results[name] = "ok"
            except concurrent.futures.TimeoutError:
                results[name] = f"no answer within {settings.readiness_timeout:g}s"
            except Exception as exc:
                results[name] = f"{type(exc).__name__}: {exc}"[:500]
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
    failed = sorted(name for name, result in results.items() if result != "ok")
    if failed:
        return JSONResponse(
            {"status": "unavailable", "detail": f"not ready: {', '.join(failed)} failed", "checks": results},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        )
    body: dict[str, object] = {"status": "ready", "checks": results}
    if settings.supervisor_state is not None:
        from services.cli.supervisor import read_state

        body["supervisor"] = read_state(settings.supervisor_state)  # restarts and last exits
    return JSONResponse(body)


LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def _may_read_metrics(request: Request, settings: ApiSettings) -> None:
    """/metrics: with DIFFII_METRICS_KEY, for that bearer key; else loopback clients only, unless
    DIFFII_METRICS_OPEN."""
    if settings.metrics_key is not None:
        sent = request.headers.get("authorization", "")
        expected = f"Bearer {settings.metrics_key.get_secret_value()}"
        if not hmac.compare_digest(sent.encode(), expected.encode()):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "/metrics needs 'Authorization: Bearer <DIFFII_METRICS_KEY>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return
    client = request.client.host if request.client else ""
    if not settings.metrics_open and client not in LOOPBACK:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "/metrics answers loopback clients only; set DIFFII_METRICS_KEY (or DIFFII_METRICS_OPEN)",
        )


METRICS_TEXT = {"text/plain": {"schema": {"type": "string", "description": "Prometheus text format 0.0.4"}}}


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"description": "every metric, in Prometheus' text format", "content": METRICS_TEXT},
        401: {"description": "DIFFII_METRICS_KEY is set and this is not it"},
        403: {"description": "no DIFFII_METRICS_KEY: /metrics answers loopback clients only"},
    },
)
def metrics(request: Request) -> Response:
    """Prometheus exposition format; the database figures are reused for DIFFII_METRICS_CACHE_SECONDS."""
    _may_read_metrics(request, request.app.state.settings)
    return Response(generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
