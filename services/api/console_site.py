"""The web console: static files under /console, served by the API itself, and `/` pointing to it.

The console is a client of the REST API like any other (it calls /v1 with the API key from the
tab's session storage), so it adds no endpoint. Its responses carry a Content-Security-Policy that
allows only its own files: no inline script, nothing from another origin. `blob:` images are the
preview sheets, fetched with the key (an <img src> cannot send an Authorization header).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

FILES = Path(__file__).with_name("console")
PREFIX = "/console"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    # An API key typed into a cached page is not the risk; a stale console after an upgrade is.
    (b"cache-control", b"no-cache"),
]


class _WithPolicy:
    """The console's files, each response sent with the policy headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_policy)


def install(app: FastAPI) -> None:
    app.mount(PREFIX, _WithPolicy(StaticFiles(directory=FILES, html=True)), name="console")

    @app.get("/", include_in_schema=False)
    def _home() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/", status_code=307)
