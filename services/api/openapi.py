"""The OpenAPI document says what this server accepts: its own model list and dataset buckets.

Both are operator settings, so the static schema of the request models cannot name them; without
this, a client (or a fuzzer) following the schema would send models and buckets the API refuses.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from services.api.settings import ApiSettings


def install(app: FastAPI, settings: ApiSettings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            _server_specific(doc, settings)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _server_specific(doc: dict[str, Any], settings: ApiSettings) -> None:
    request = doc.get("components", {}).get("schemas", {}).get("JobRequest")
    if request is None:
        return
    props = request["properties"]
    props["model"]["enum"] = sorted(settings.models)
    if settings.allowed_dataset_buckets:
        buckets = "|".join(re.escape(b) for b in sorted(settings.allowed_dataset_buckets))
        props["dataset_uri"]["pattern"] = f"^s3://({buckets})/.+$"
    else:  # no bucket allowed: only uploaded datasets
        del props["dataset_uri"]
        request["oneOf"] = [{"required": ["dataset_id"]}]
