"""What every request passes before the routes (services/api/guards.py, docs_site.py, /metrics):
a per-key rate limit shared through Redis, keys refused in URLs and redacted from logs, /metrics
behind a key or loopback and cheap, /docs from local files under the console's policy, relative
redirects, nosniff and no-store on /v1, HEAD. In-process app on the test Postgres and Redis."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import event

from services.api.console_site import CSP
from services.api.guards import TokenBuckets
from services.api.redaction import redact
from tests.dataset_builders import good_members, zip_bytes
from tests.service_helpers import auth


def test_a_key_over_its_rate_gets_429_with_retry_after_and_others_do_not(
    api_client_factory: Callable[..., Any], make_api_key: Any
) -> None:
    # Two API processes' worth of apps on one Redis: the bucket is the key's, whichever serves it.
    first, _ = api_client_factory(rate_limit_per_second=0.01, rate_limit_burst=3)
    second, _ = api_client_factory(rate_limit_per_second=0.01, rate_limit_burst=3)
    busy, calm = auth(make_api_key()), auth(make_api_key())
    assert [c.get("/v1/jobs", headers=busy).status_code for c in (first, second, first)] == [200] * 3
    refused = second.get("/v1/jobs", headers=busy)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert "rate limit" in refused.json()["detail"] and "rate_limit_per_second" in refused.json()["detail"]
    assert first.get("/v1/jobs", headers=calm).status_code == 200
    assert first.get("/healthz").status_code == 200  # probes are not rate limited


def test_the_schema_says_every_v1_operation_may_be_rate_limited(
    api_client_factory: Callable[..., Any],
) -> None:
    limited, _ = api_client_factory(rate_limit_per_second=5)
    paths = limited.get("/openapi.json").json()["paths"]
    operations = [(p, m, op) for p, ops in paths.items() if p.startswith("/v1/") for m, op in ops.items()]
    assert operations
    for path, method, op in operations:
        answer = op["responses"].get("429")
        assert answer is not None and "Retry-After" in answer.get("headers", {}), (method, path)
    # A quota's 429 (job creation) keeps its own body and admits the rate limit's plain one too.
    quota = paths["/v1/jobs"]["post"]["responses"]["429"]["content"]["application/json"]["schema"]
    assert {"$ref": "#/components/schemas/Problem"} in quota["anyOf"] and len(quota["anyOf"]) == 2
    unlimited, _ = api_client_factory(rate_limit_per_second=0)
    listing = unlimited.get("/openapi.json").json()["paths"]["/v1/jobs"]["get"]["responses"]
    assert "429" not in listing  # off: no such answer


def test_the_in_process_buckets_refill_at_their_rate() -> None:
    buckets = TokenBuckets(rate=1000, burst=2)

    async def run() -> list[float]:
        return [await buckets.take("k") for _ in range(3)]

    waits = asyncio.run(run())
    assert waits[:2] == [0, 0] and 0 < waits[2] <= 0.001
    assert asyncio.run(buckets.take("other")) == 0


def test_a_key_in_the_url_is_refused_and_never_logged(api: Any, make_api_key: Any) -> None:
    key = make_api_key()
    response = api.get(f"/v1/jobs?api_key={key}")
    assert response.status_code == 400
    assert "api_key" in response.json()["detail"] and "Authorization: Bearer" in response.json()["detail"]
    assert key not in redact(f'127.0.0.1:1 - "GET /v1/jobs?limit=2&api_key={key} HTTP/1.1" 400')
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, "%s", (f"/x?apikey={key}",), None)
    from services.api.redaction import RedactSignedUrls

    RedactSignedUrls().filter(record)
    assert key not in record.getMessage()


def test_metrics_need_the_key_or_a_loopback_client(api_client_factory: Callable[..., Any]) -> None:
    closed, _ = api_client_factory()
    assert closed.get("/metrics").status_code == 403  # the test client is not a loopback address
    keyed, _ = api_client_factory(metrics_key="scrape-key")
    assert keyed.get("/metrics").status_code == 401
    assert keyed.get("/metrics", headers=auth("wrong")).status_code == 401
    assert keyed.get("/metrics", headers=auth("scrape-key")).status_code == 200
    from fastapi.testclient import TestClient

    local = TestClient(closed.app, client=("127.0.0.1", 50000))
    assert local.get("/metrics").status_code == 200


def test_metrics_reuse_their_database_figures_within_the_cache_window(
    api_client_factory: Callable[..., Any],
) -> None:
    client, _ = api_client_factory(metrics_open=True, metrics_cache_seconds=600)
    engine = client.app.state.session_factory.kw["bind"]
    queries: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        queries.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        first = client.get("/metrics")
        after_first = len(queries)
        for _ in range(5):
            assert client.get("/metrics").status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert first.status_code == 200 and "diffii_state_db_up 1.0" in first.text
    assert after_first > 0 and len(queries) == after_first


def test_docs_load_only_local_files_under_the_console_policy(api: Any) -> None:
    script = "docs-assets/swagger-ui-bundle.js"
    response = api.get("/docs")
    assert response.status_code == 200
    assert response.headers["content-security-policy"] == CSP
    assert "http" not in response.text and "cdn" not in response.text.lower()
    assert f'src="{script}"' in response.text and "<script>" not in response.text
    asset = api.get(f"/{script}")
    assert asset.status_code == 200 and len(asset.content) > 100_000
    assert asset.headers["content-security-policy"] == CSP
    redoc = api.get("/redoc")  # ReDoc needs inline styles: the policy stays, the page goes
    assert redoc.status_code == 308 and redoc.headers["location"] == "docs"
    init = api.get("/docs-init.js")
    assert init.status_code == 200 and "SwaggerUIBundle" in init.text


@pytest.mark.parametrize(
    ("path", "location"), [("/", "/console/"), ("/console", "/console/"), ("/v1/jobs/", "/v1/jobs")]
)
def test_redirects_are_relative_whatever_the_host_header(api: Any, path: str, location: str) -> None:
    response = api.get(path, headers={"Host": "evil.example"})
    assert response.status_code in (307, 308), response.text
    assert response.headers["location"] == location


def test_v1_answers_are_nosniff_and_not_stored(api: Any, make_api_key: Any) -> None:
    for response in (api.get("/v1/jobs", headers=auth(make_api_key())), api.get("/v1/jobs")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"


def test_head_is_answered_where_get_is(api: Any, make_api_key: Any) -> None:
    headers = auth(make_api_key())
    for path in ("/healthz", "/v1/jobs", "/openapi.json", "/docs", "/console/"):
        got, head = api.get(path, headers=headers), api.head(path, headers=headers)
        assert head.status_code == got.status_code == 200, path
        assert head.content == b"" and head.headers["content-length"] == got.headers["content-length"], path
    assert api.head("/v1/jobs").status_code == 401


def test_a_job_that_would_make_no_image_is_422_saying_why(api: Any, make_api_key: Any) -> None:
    headers = auth(make_api_key())
    upload = api.post("/v1/datasets", headers=headers, files={"file": ("b.zip", zip_bytes(good_members()))})
    assert upload.status_code == 201, upload.text
    largest = max(c["images"] for c in upload.json()["classes"])
    body = {"dataset_id": upload.json()["id"], "model": "tiny", "expansion": 0.5 / largest}
    response = api.post("/v1/jobs", headers=headers, json=body)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "expansion"]
    assert "would make no image" in error["msg"] and f"{largest} real images" in error["msg"]
    assert api.post("/v1/jobs", headers=headers, json={**body, "expansion": 1 / largest}).status_code == 202
