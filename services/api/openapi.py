"""The OpenAPI document says what this server accepts, in a shape client generators can use.

- The server's own model list, dataset buckets and class limit: operator settings, which the static
  schema of the request models cannot name; without them a client (or a fuzzer) following the
  schema would send models and buckets the API refuses.
- `JobRequest` is a plain object (a generator turns a top-level oneOf into an untyped body): the
  one-dataset rule becomes `required` (uploads only) or a `not` that generators pass over, and the
  methods' rules on `strength` and `fill_pool_to` stay an if/then/else, which they ignore and
  validators apply.
- The JobStatus enum names its terminal statuses (`x-terminal`), the ones a job never leaves: the
  console reads them there rather than keeping a list of its own.
- Every /v1 operation may answer 429 with `Retry-After` when the per-key rate limit is on
  (services/api/guards.py answers it before any route runs, so no route declares it).
- Maps with constrained keys say so with `propertyNames` (pydantic writes `patternProperties`, which
  would let keys outside the pattern through with any value).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from services.api.settings import ApiSettings
from services.common.dataset_uri import s3_uri_pattern
from services.common.statuses import TERMINAL_JOB_STATUSES


def install(app: FastAPI, settings: ApiSettings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            _server_specific(doc, settings)
            _terminal_statuses(doc)
            if settings.rate_limit_per_second > 0:
                _rate_limited(doc)
            _plain_maps(doc)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _server_specific(doc: dict[str, Any], settings: ApiSettings) -> None:
    request = doc.get("components", {}).get("schemas", {}).get("JobRequest")
    if request is None:
        return
    props = request["properties"]
    props["model"]["enum"] = sorted(settings.models)
    _object_of(props["class_prompts"])["maxProperties"] = settings.make_dataset_limits().max_classes
    if settings.allowed_dataset_buckets:
        props["dataset_uri"]["pattern"] = s3_uri_pattern(settings.allowed_dataset_buckets)
        both = {"required": ["dataset_id", "dataset_uri"]}
        neither = {"not": {"anyOf": [{"required": ["dataset_id"]}, {"required": ["dataset_uri"]}]}}
        request["not"] = {"anyOf": [both, neither]}  # exactly one of the two
    else:  # no bucket allowed: only uploaded datasets
        del props["dataset_uri"]
        request["required"] = ["dataset_id"]


def _terminal_statuses(doc: dict[str, Any]) -> None:
    """`x-terminal` on the JobStatus enum: the statuses a job never leaves (the console reads them)."""
    status = doc.get("components", {}).get("schemas", {}).get("JobStatus")
    if status is not None:
        status["x-terminal"] = [s.value for s in TERMINAL_JOB_STATUSES]


PROBLEM = {"$ref": "#/components/schemas/Problem"}
RETRY_AFTER = {
    "description": "seconds to wait before the next request",
    "schema": {"type": "integer", "minimum": 1},
}


def _rate_limited(doc: dict[str, Any]) -> None:
    """A 429 with `Retry-After` on every /v1 operation; where the route already declares a 429 (a
    quota), the one entry names both causes."""
    for path, operations in doc.get("paths", {}).items():
        if not path.startswith("/v1/"):
            continue
        for operation in operations.values():
            answers = operation.setdefault("responses", {})
            declared = answers.get("429")
            if declared is None:
                answers["429"] = {
                    "description": "over the API key's request rate limit (rate_limit_per_second)",
                    "headers": {"Retry-After": RETRY_AFTER},
                    "content": {"application/json": {"schema": PROBLEM}},
                }
            else:  # a quota's 429 has a body of its own; the rate limit's is a plain Problem
                declared["description"] += "; or over the API key's request rate limit"
                declared.setdefault("headers", {})["Retry-After"] = RETRY_AFTER
                for media in declared.get("content", {}).values():
                    media["schema"] = {"anyOf": [media["schema"], PROBLEM]}


def _object_of(schema: dict[str, Any]) -> dict[str, Any]:
    """The object branch of an optional (anyOf [object, null]) property."""
    return next(s for s in schema.get("anyOf", [schema]) if s.get("type") == "object")


def _plain_maps(node: Any) -> None:
    if isinstance(node, dict):
        patterns = node.get("patternProperties")
        if node.get("type") == "object" and isinstance(patterns, dict) and len(patterns) == 1:
            ((pattern, values),) = patterns.items()
            del node["patternProperties"]
            node["propertyNames"] = {**node.get("propertyNames", {}), "pattern": pattern}
            node["additionalProperties"] = values
        for value in node.values():
            _plain_maps(value)
    elif isinstance(node, list):
        for value in node:
            _plain_maps(value)
