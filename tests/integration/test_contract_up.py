"""Schemathesis against a running `diffii up`, as a user meets it: the schema it serves, fetched and
called over HTTP on its embedded defaults (SQLite, the SQLite broker, local objects; the worker
running beside it), with the checks of tests/test_api_contract.py."""

from __future__ import annotations

import httpx
import schemathesis

from tests.integration.conftest import Up
from tests.test_api_contract import assert_schema_holds, existing_ids


def test_a_running_diffii_up_does_what_its_schema_says(up: Up) -> None:
    key = up.key()
    with httpx.Client(base_url=up.url, timeout=30) as client:
        ids = existing_ids(client, key)
    assert_schema_holds(schemathesis.openapi.from_url(f"{up.url}/openapi.json"), key, ids)
