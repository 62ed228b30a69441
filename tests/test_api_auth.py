"""Authentication and ownership: 401 without a valid key, 404 for another owner's things."""

from __future__ import annotations

from typing import Any

import pytest

from services.common.auth import parse_prefix, revoke_key
from services.common.db import session_scope
from services.common.models import ApiKey
from tests.dataset_builders import good_members, zip_bytes
from tests.service_helpers import auth

PROTECTED = [
    ("POST", "/v1/datasets"),
    ("GET", "/v1/datasets/abc"),
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/abc"),
    ("POST", "/v1/jobs/abc/cancel"),
    ("GET", "/v1/jobs/abc/archive"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer dfi_00000000_not-a-real-secret"},
        {"Authorization": "Bearer garbage"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
    ],
    ids=["missing", "unknown", "malformed", "wrong-scheme"],
)
def test_missing_or_bad_key_is_401(api: Any, method: str, path: str, headers: dict[str, str]) -> None:
    response = api.request(method, path, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "key" in response.json()["detail"].lower() or "authorization" in response.json()["detail"].lower()


def test_revoked_key_is_401(api: Any, make_api_key: Any, pg_session_factory: Any) -> None:
    key = make_api_key()
    assert api.get("/v1/jobs", headers=auth(key)).status_code == 200
    with session_scope(pg_session_factory) as session:
        assert revoke_key(session, parse_prefix(key) or "") == 1
    response = api.get("/v1/jobs", headers=auth(key))
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]


def test_key_is_stored_only_as_a_hash(make_api_key: Any, pg_session_factory: Any) -> None:
    key = make_api_key()
    with pg_session_factory() as session:
        rows = session.query(ApiKey).filter(ApiKey.prefix == parse_prefix(key)).all()
    assert len(rows) == 1
    assert rows[0].key_hash != key and len(rows[0].key_hash) == 64
    assert key.split("_", 2)[2] not in rows[0].key_hash


def test_another_owner_gets_404_everywhere(api: Any, make_api_key: Any) -> None:
    alice, mallory = make_api_key(), make_api_key()
    upload = api.post(
        "/v1/datasets", headers=auth(alice), files={"file": ("birds.zip", zip_bytes(good_members()))}
    )
    assert upload.status_code == 201, upload.text
    dataset_id = upload.json()["id"]
    job = api.post("/v1/jobs", headers=auth(alice), json={"dataset_id": dataset_id})
    assert job.status_code == 202, job.text
    job_id = job.json()["id"]

    # Mallory can neither see Alice's dataset nor start a job on it.
    assert api.get(f"/v1/datasets/{dataset_id}", headers=auth(mallory)).status_code == 404
    response = api.post("/v1/jobs", headers=auth(mallory), json={"dataset_id": dataset_id})
    assert response.status_code == 404
    assert dataset_id in response.json()["detail"]
    # ...nor her job, its status, its archive, nor cancel it; and it is not in her list.
    for method, path in [
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/archive"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
    ]:
        response = api.request(method, path, headers=auth(mallory))
        assert response.status_code == 404, (method, path, response.text)
        assert response.json() == {"detail": f"job {job_id} not found"}
    assert api.get("/v1/jobs", headers=auth(mallory)).json()["jobs"] == []

    # Alice still sees all of it, and her job was not cancelled by Mallory's attempt.
    assert api.get(f"/v1/datasets/{dataset_id}", headers=auth(alice)).status_code == 200
    mine = api.get(f"/v1/jobs/{job_id}", headers=auth(alice)).json()
    assert mine["cancel_requested"] is False
    assert api.get(f"/v1/jobs/{job_id}/archive", headers=auth(alice)).status_code == 409
