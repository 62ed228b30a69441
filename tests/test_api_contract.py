"""Schemathesis against the API's own OpenAPI schema: no 5xx, and every answer is one the schema
documents (status, content type, body); requests the schema calls valid are accepted. The app runs
in-process on the test Postgres and Redis, called with a valid API key; tests/integration/
test_contract_up.py runs the same checks over HTTP against a running `diffii up`."""

from __future__ import annotations

import os
from typing import Any

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance

from tests.dataset_builders import good_members, zip_bytes

MAX_EXAMPLES = int(os.environ.get("DIFFII_FUZZ_EXAMPLES", "50"))  # per operation; CI may raise it
# An upload's content decides whether it is a dataset, and no schema can say which bytes make a
# zip of images: random bytes are refused (400, documented), so "schema-valid data is accepted"
# cannot hold for this one operation. Every other check still runs on it.
CONTENT_DEFINED = {"POST /v1/datasets"}


def existing_ids(client: httpx.Client, key: str) -> dict[str, str]:
    """A dataset and a job of the key's owner, by path parameter name: random ids only ever reach
    the 404 answers, so half the cases use these to reach the documents themselves."""
    headers = {"Authorization": f"Bearer {key}"}
    dataset = {"file": ("d.zip", zip_bytes(good_members()))}
    upload = client.post("/v1/datasets", headers=headers, files=dataset)
    assert upload.status_code == 201, upload.text
    params = {"model": "tiny", "expansion": 1, "inference_steps": 2, "inversion_steps": 2}
    job = client.post("/v1/jobs", headers=headers, json={**params, "dataset_id": upload.json()["id"]})
    assert job.status_code == 202, job.text
    return {"dataset_id": upload.json()["id"], "job_id": job.json()["id"]}


def _fuzz(operation: Any, headers: dict[str, str], ids: dict[str, str]) -> None:
    excluded = [positive_data_acceptance] if operation.label in CONTENT_DEFINED else []

    @given(case=operation.as_strategy(), existing=st.booleans())
    # Derandomized: the same cases every run, so CI cannot pass or fail by chance.
    @settings(
        max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
    )
    def check(case: Any, existing: bool) -> None:
        if existing and case.path_parameters:
            case.path_parameters.update({k: v for k, v in ids.items() if k in case.path_parameters})
        case.call_and_validate(headers=headers, excluded_checks=excluded)

    check()


def assert_schema_holds(schema: Any, key: str, ids: dict[str, str]) -> None:
    """Fuzz every operation of `schema` with a valid key and, in half the cases, the existing `ids`
    as path parameters; one report of every operation that failed."""
    bearer = {"Authorization": f"Bearer {key}"}
    failures: dict[str, str] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        try:
            _fuzz(operation, bearer, ids)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # hypothesis reports several failures as an exception group
            failures[operation.label] = str(exc)[:1500]
    assert failures == {}, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())


def test_the_api_does_what_its_schema_says(api_client_factory: Any, make_api_key: Any) -> None:
    client, _settings = api_client_factory()
    key = make_api_key()
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app)
    assert_schema_holds(schema, key, existing_ids(client, key))
