"""Error answers that stay small whatever the request: capped bodies and short 422 echoes.

A request body is refused (413) past `max_json_bytes` while it is still being read, so a huge body
costs the API at most the cap; and a 422 quotes at most a short prefix of what it refuses, so the
answer cannot be larger than the question (or carry a NaN that JSON cannot encode).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from fastapi import HTTPException, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

ECHO_CHARS = 100  # what a 422 quotes of a refused value
MAX_MESSAGE = 500
MAX_ERRORS = 50  # entries of one 422; a body of 10,000 bad keys is told about the first ones


def _too_large(size: int, limit: int, declared: bool) -> HTTPException:
    said = "declares" if declared else "has at least"
    return HTTPException(
        status.HTTP_413_CONTENT_TOO_LARGE,
        f"the request body {said} {size:,} bytes, over the limit of {limit:,} bytes (max_json_bytes)",
    )


class BodyLimit:
    """ASGI middleware: 413 once a request body passes `limit` bytes, before it is parsed.

    The 413 is raised from `receive`, inside the route's body parsing, so FastAPI answers it like
    any HTTPException. `exempt(scope)` names requests with a cap of their own (the upload)."""

    def __init__(self, app: ASGIApp, limit: int, exempt: Callable[[Scope], bool]) -> None:
        self.app, self.limit, self.exempt = app, limit, exempt

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.exempt(scope):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"")
        declared_size = int(declared) if declared.isdigit() else 0
        received = 0

        async def capped() -> Message:
            nonlocal received
            if declared_size > self.limit:
                raise _too_large(declared_size, self.limit, declared=True)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _too_large(received, self.limit, declared=False)
            return message

        await self.app(scope, capped, send)


def short(value: Any) -> Any:
    """`value` if it is small and JSON can carry it; else a prefix of its text, marked cut."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # 'nan', 'inf': JSON has no such number
    if value is None or isinstance(value, bool | float):
        return value
    if isinstance(value, str):
        return value if len(value) <= ECHO_CHARS else value[:ECHO_CHARS] + "…"
    if isinstance(value, int):
        return value if abs(value) < 10**18 else short(f"{value:.3e}")
    try:
        text = json.dumps(jsonable_encoder(value), allow_nan=False)
    except (TypeError, ValueError):  # a NaN inside, or something JSON has no form for
        return short(str(value))
    return value if len(text) <= ECHO_CHARS else text[:ECHO_CHARS] + "…"


def _entry(error: dict[str, Any]) -> dict[str, Any]:
    entry = {
        "loc": [short(part) for part in error.get("loc", ())],
        "msg": str(error.get("msg", ""))[:MAX_MESSAGE],
        "type": error.get("type"),
    }
    if "input" in error:
        entry["input"] = short(error["input"])
    if "ctx" in error:  # the constraint (limits, patterns); an exception becomes its message
        scalar = str | int | float | bool
        entry["ctx"] = {k: short(v if isinstance(v, scalar) else str(v)) for k, v in error["ctx"].items()}
    return entry


async def validation_problem(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, each refused input cut to a short prefix and at most MAX_ERRORS entries."""
    assert isinstance(exc, RequestValidationError)
    errors = [_entry(e) for e in exc.errors()[:MAX_ERRORS]]
    return JSONResponse({"detail": errors}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)
