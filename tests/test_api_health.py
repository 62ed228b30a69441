"""/healthz, /readyz (database, broker, storage) and /metrics."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.dataset_builders import good_members, zip_bytes
from tests.service_helpers import auth, free_port

DOWN_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:{port}/nothing"
DOWN_REDIS = "redis://127.0.0.1:{port}/0"


def test_healthz(api: Any) -> None:
    response = api.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_all_up(api: Any) -> None:
    response = api.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"database": "ok", "broker": "ok", "storage": "ok"}


def test_readyz_reports_a_down_broker(api_client_factory: Callable[..., Any]) -> None:
    client, _ = api_client_factory(broker_url=DOWN_REDIS.format(port=free_port()), readiness_timeout=2)
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["detail"] == "not ready: broker failed"
    assert body["checks"]["database"] == "ok" and body["checks"]["storage"] == "ok"
    assert body["checks"]["broker"] != "ok"


def test_readyz_reports_a_down_database(api_client_factory: Callable[..., Any]) -> None:
    client, _ = api_client_factory(database_url=DOWN_POSTGRES.format(port=free_port()), readiness_timeout=2)
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["detail"] == "not ready: database failed"
    assert "OperationalError" in response.json()["checks"]["database"]


def test_readyz_reports_a_missing_bucket(
    api_client_factory: Callable[..., Any], moto_s3: dict[str, Any]
) -> None:
    client, _ = api_client_factory(**{**moto_s3, "s3_bucket": "bucket-that-was-never-made"})
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["detail"] == "not ready: storage failed"


def test_metrics_expose_requests_by_route_and_state_gauges(
    api_client_factory: Callable[..., Any], make_api_key: Any
) -> None:
    api, _ = api_client_factory(metrics_key="metrics-key")
    key = make_api_key()
    ds = api.post(
        "/v1/datasets", headers=auth(key), files={"file": ("b.zip", zip_bytes(good_members()))}
    ).json()
    job_id = api.post("/v1/jobs", headers=auth(key), json={"dataset_id": ds["id"]}).json()["id"]
    api.get(f"/v1/jobs/{job_id}", headers=auth(key))
    api.get("/v1/jobs/does-not-exist", headers=auth(key))
    api.get("/no/such/route")

    response = api.get("/metrics", headers=auth("metrics-key"))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    # Ids collapse into the route template; the status code is a label.
    assert 'diffii_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="200"} 1.0' in text
    assert 'diffii_http_requests_total{method="GET",route="/v1/jobs/{job_id}",status="404"} 1.0' in text
    assert 'diffii_http_requests_total{method="POST",route="/v1/jobs",status="202"} 1.0' in text
    assert 'route="<unmatched>",status="404"' in text
    assert f"/v1/jobs/{job_id}" not in text
    assert 'diffii_http_request_duration_seconds_bucket{le="0.005",method="POST",route="/v1/datasets"' in text
    assert "diffii_state_db_up 1.0" in text
    assert 'diffii_jobs{status="queued"}' in text
    assert 'diffii_shards{kind="prepare",status="queued"}' in text
    assert "diffii_workers_busy" in text


def test_metrics_survive_a_down_database(api_client_factory: Callable[..., Any]) -> None:
    client, _ = api_client_factory(database_url=DOWN_POSTGRES.format(port=free_port()), metrics_open=True)
    response = client.get("/metrics")
    assert response.status_code == 200
    assert "diffii_state_db_up 0.0" in response.text


def test_openapi_documents_the_api(api: Any) -> None:
    spec = api.get("/openapi.json").json()
    for path in (
        "/v1/datasets",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/cancel",
        "/v1/jobs/{job_id}/archive",
    ):
        assert path in spec["paths"], path
    upload = spec["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload["schema"]["required"] == ["file"]
    assert "concepts" in spec["components"]["schemas"]["JobRequest"]["properties"]
    assert api.get("/docs").status_code == 200
