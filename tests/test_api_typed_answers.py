"""The OpenAPI document types every success answer, and seeds survive JavaScript: a 63-bit seed goes
out as decimal digits (JSON numbers past 2**53 lose digits in a browser) and comes in either way."""

from __future__ import annotations

from typing import Any

import pytest

from services.api.schemas import HealthOut, JobParamsOut, ReadyOut
from services.client import _exact_seed
from services.common.models import Job

BIG_SEED = 7691863025641212835  # > 2**53: as a JavaScript number it reads 7691863025641213000


def test_every_success_answer_has_a_typed_body(api: Any) -> None:
    doc = api.get("/openapi.json").json()
    untyped = []
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            for code, answer in operation["responses"].items():
                if not code.startswith("2") or code == "204":
                    continue
                content = answer.get("content") or {}
                if not content or any(not media.get("schema") for media in content.values()):
                    untyped.append(f"{method.upper()} {path} {code}")
    assert not untyped, untyped
    schemas = doc["components"]["schemas"]
    assert doc["paths"]["/v1/jobs/{job_id}/preview/{class_index}"]["get"]["responses"]["200"]["content"] == {
        "image/png": {"schema": {"type": "string", "format": "binary"}}
    }
    archive = doc["paths"]["/v1/jobs/{job_id}/archive"]["get"]["responses"]["200"]["content"]
    assert archive == {"application/zip": {"schema": {"type": "string", "format": "binary"}}}
    ready = doc["paths"]["/readyz"]["get"]["responses"]
    assert ready["200"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ReadyOut"}
    assert ready["503"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/NotReadyOut"
    }
    assert "text/plain" in doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    # JobOut.params is the job-parameters model, every field named, the seed as digits.
    assert schemas["JobOut"]["properties"]["params"] == {"$ref": "#/components/schemas/JobParamsOut"}
    params = schemas["JobParamsOut"]["properties"]
    assert {"method", "model", "expansion", "concepts", "seed"} <= params.keys()
    assert params["seed"]["type"] == "string" and params["seed"]["pattern"].startswith("^(0|")


def test_the_health_answers_are_their_models(api: Any) -> None:
    HealthOut.model_validate(api.get("/healthz").json())
    ready = api.get("/readyz")
    assert ready.status_code == 200, ready.text
    ReadyOut.model_validate(ready.json())


def test_a_63_bit_seed_goes_out_as_digits_and_comes_in_either_way(
    api: Any, owner: dict[str, Any], pg_session_factory: Any
) -> None:
    for sent in (BIG_SEED, str(BIG_SEED)):
        body = {"dataset_id": owner["dataset_id"], "seed": sent}
        created = api.post("/v1/jobs", headers=owner["headers"], json=body)
        assert created.status_code == 202, created.text
        job = created.json()
        assert job["params"]["seed"] == str(BIG_SEED)
        assert api.get(f"/v1/jobs/{job['id']}", headers=owner["headers"]).json()["params"]["seed"] == str(
            BIG_SEED
        )
        with pg_session_factory() as session:
            assert session.get(Job, job["id"]).params["seed"] == BIG_SEED  # stored (and run) as the integer
    listed = api.get("/v1/jobs", headers=owner["headers"]).json()["jobs"]
    assert [j["params"]["seed"] for j in listed] == [str(BIG_SEED)] * 2
    JobParamsOut.model_validate(listed[0]["params"])
    # The same body with the seed as a number or as digits is one request (one Idempotency-Key).
    headers = {**owner["headers"], "Idempotency-Key": "seed-either-way"}
    first = api.post("/v1/jobs", headers=headers, json={"dataset_id": owner["dataset_id"], "seed": 5})
    again = api.post("/v1/jobs", headers=headers, json={"dataset_id": owner["dataset_id"], "seed": "5"})
    assert (first.status_code, again.status_code) == (202, 200) and again.json()["id"] == first.json()["id"]


@pytest.mark.parametrize("seed", ["9223372036854775808", "-1", "1e3", "7.0", "", " 7", 2**63, -1])
def test_a_seed_out_of_range_or_not_digits_is_refused(api: Any, owner: dict[str, Any], seed: Any) -> None:
    response = api.post(
        "/v1/jobs", headers=owner["headers"], json={"dataset_id": owner["dataset_id"], "seed": seed}
    )
    assert response.status_code == 422, response.text
    assert [entry["loc"] for entry in response.json()["detail"]] == [["body", "seed"]]


def test_the_python_client_reads_the_seed_as_an_integer() -> None:
    job = _exact_seed({"id": "x", "params": {"seed": str(BIG_SEED), "model": "tiny"}})
    assert job["params"]["seed"] == BIG_SEED
    assert _exact_seed({"params": {"seed": 7}})["params"]["seed"] == 7  # an older server's integer
