"""/docs (Swagger UI) from local files, under the console's Content-Security-Policy.

FastAPI's own pages load their scripts from a CDN at floating versions, with no integrity check, on
the console's origin (where API keys are typed). These pages load the copies pinned in the
`fastapi-offline` package (1.7.7: Swagger UI 5.32.6 and ReDoc's standalone build) from
`/docs-assets/`, and start Swagger UI from a file rather than an inline script, so the console's
policy (`script-src 'self'`, nothing from another origin) holds for them too. ReDoc cannot run under
that policy (it writes inline styles and starts a worker from a blob), so `/redoc` sends the browser
to `/docs` rather than relax the policy on the origin where keys are typed.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from services.api.console_site import HEADERS, _WithPolicy


def _assets() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).with_name("static")


SWAGGER = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>diffii API</title>
<link rel="icon" href="docs-assets/favicon.png">
<link rel="stylesheet" href="docs-assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="docs-assets/swagger-ui-bundle.js"></script><script src="docs-init.js"></script></body>
</html>
"""
SWAGGER_INIT = (
    'window.ui = SwaggerUIBundle({url: "openapi.json", dom_id: "#swagger-ui", deepLinking: true,'
    " presets: [SwaggerUIBundle.presets.apis], layout: 'BaseLayout'});\n"
)
POLICY = {name.decode(): value.decode() for name, value in HEADERS}


def install(app: FastAPI) -> None:
    """Call with FastAPI(docs_url=None, redoc_url=None)."""
    app.mount("/docs-assets", _WithPolicy(StaticFiles(directory=_assets())), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def _swagger() -> HTMLResponse:
        return HTMLResponse(SWAGGER, headers=POLICY)

    @app.get("/docs-init.js", include_in_schema=False)
    def _swagger_init() -> Response:
        return Response(SWAGGER_INIT, media_type="text/javascript", headers=POLICY)

    @app.get("/redoc", include_in_schema=False)
    def _redoc() -> RedirectResponse:
        return RedirectResponse("docs", status_code=308, headers=POLICY)
