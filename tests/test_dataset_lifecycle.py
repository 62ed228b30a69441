"""Datasets are their owner's things: listed (keyset pages), deleted (not while a job that has not
ended uses them), and collected by `diffii admin gc` once unused past the dataset retention; over
the API in-process and the CLI against a live server, on the test Postgres and a local store."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner

from services.common import keys
from services.common.db import session_scope
from services.common.models import Dataset, Job, JobStatus, utcnow
from services.common.retention import collect
from services.common.storage import make_storage
from tests.dataset_builders import good_members, zip_bytes
from tests.service_helpers import auth


@pytest.fixture
def svc(api_client_factory: Any, make_api_key: Any) -> dict[str, Any]:
    client, settings = api_client_factory()
    return {"client": client, "settings": settings, "storage": make_storage(settings), "key": make_api_key()}


def _upload(svc: dict[str, Any], key: str | None = None) -> str:
    files = {"file": ("b.zip", zip_bytes(good_members()))}
    r = svc["client"].post("/v1/datasets", headers=auth(key or svc["key"]), files=files)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _stored(svc: dict[str, Any], dataset_id: str) -> list[str]:
    return svc["storage"].list(keys.dataset_prefix(dataset_id))


def _job_on(svc: dict[str, Any], dataset_id: str) -> str:
    r = svc["client"].post("/v1/jobs", headers=auth(svc["key"]), json={"dataset_id": dataset_id})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def _set(sessions: Any, model: type, row_id: str, **values: Any) -> None:
    with session_scope(sessions) as session:
        row = session.get(model, row_id)
        for name, value in values.items():
            setattr(row, name, value)


def test_datasets_are_listed_newest_first_in_pages_to_their_owner_only(
    svc: dict[str, Any], make_api_key: Any
) -> None:
    uploaded = [_upload(svc) for _ in range(3)]
    headers = auth(svc["key"])
    first = svc["client"].get("/v1/datasets", params={"limit": 2}, headers=headers).json()
    assert [d["id"] for d in first["datasets"]] == uploaded[::-1][:2]
    assert first["datasets"][0]["classes"] == [
        {"name": "blue jay", "images": 2},
        {"name": "черный.дрозд", "images": 1},
    ]
    rest = svc["client"].get(
        "/v1/datasets", params={"limit": 2, "cursor": first["next_cursor"]}, headers=headers
    )
    assert [d["id"] for d in rest.json()["datasets"]] == [uploaded[0]] and rest.json()["next_cursor"] is None

    stranger = svc["client"].get("/v1/datasets", headers=auth(make_api_key())).json()
    assert stranger == {"datasets": [], "next_cursor": None}
    assert svc["client"].get("/v1/datasets").status_code == 401
    bad = svc["client"].get("/v1/datasets", params={"cursor": "nope"}, headers=headers)
    assert bad.status_code == 422


def test_delete_removes_the_stored_archive_and_the_row(svc: dict[str, Any], make_api_key: Any) -> None:
    dataset_id, neighbour = _upload(svc), _upload(svc)
    assert len(_stored(svc, dataset_id)) == 1
    headers = auth(svc["key"])

    assert svc["client"].delete(f"/v1/datasets/{dataset_id}", headers=auth(make_api_key())).status_code == 404
    assert len(_stored(svc, dataset_id)) == 1  # another owner's request removed nothing

    assert svc["client"].delete(f"/v1/datasets/{dataset_id}", headers=headers).status_code == 204
    assert _stored(svc, dataset_id) == []
    assert svc["client"].get(f"/v1/datasets/{dataset_id}", headers=headers).status_code == 404
    assert svc["client"].delete(f"/v1/datasets/{dataset_id}", headers=headers).status_code == 404
    assert len(_stored(svc, neighbour)) == 1
    r = svc["client"].post("/v1/jobs", headers=headers, json={"dataset_id": dataset_id})
    assert r.status_code == 404 and "not found" in r.json()["detail"]


def test_delete_is_409_while_a_job_that_has_not_ended_uses_it(
    svc: dict[str, Any], pg_session_factory: Any
) -> None:
    dataset_id = _upload(svc)
    job_id = _job_on(svc, dataset_id)
    headers = auth(svc["key"])
    for state in (JobStatus.queued, JobStatus.generating, JobStatus.cancelling):
        _set(pg_session_factory, Job, job_id, status=state)
        r = svc["client"].delete(f"/v1/datasets/{dataset_id}", headers=headers)
        assert r.status_code == 409, r.text
        assert job_id in r.json()["detail"] and "not ended" in r.json()["detail"]
        assert len(_stored(svc, dataset_id)) == 1

    _set(pg_session_factory, Job, job_id, status=JobStatus.succeeded, finished_at=utcnow())
    assert svc["client"].delete(f"/v1/datasets/{dataset_id}", headers=headers).status_code == 204
    job = svc["client"].get(f"/v1/jobs/{job_id}", headers=headers).json()
    assert job["status"] == "succeeded" and job["dataset_id"] is None  # the job's record stays


def test_gc_removes_datasets_unused_past_the_retention_only(
    svc: dict[str, Any], pg_session_factory: Any
) -> None:
    long_ago = utcnow() - timedelta(days=40)
    fresh, unused, deleted_job, ran_recently, running = (_upload(svc) for _ in range(5))
    for dataset_id in (unused, deleted_job, ran_recently, running):
        _set(pg_session_factory, Dataset, dataset_id, created_at=long_ago)
    # Its only job was deleted long ago: the dataset is no longer stranded.
    gone = _job_on(svc, deleted_job)
    _set(pg_session_factory, Job, gone, status=JobStatus.failed, finished_at=long_ago, created_at=long_ago)
    assert svc["client"].delete(f"/v1/jobs/{gone}", headers=auth(svc["key"])).status_code == 204
    recent = _job_on(svc, ran_recently)
    _set(pg_session_factory, Job, recent, status=JobStatus.succeeded, finished_at=utcnow())
    busy = _job_on(svc, running)
    _set(pg_session_factory, Job, busy, status=JobStatus.learning, created_at=long_ago)

    def gc(dry_run: bool) -> Any:
        return collect(
            pg_session_factory,
            svc["storage"],
            retention=timedelta(days=30),
            intermediate_retention=timedelta(days=1),
            dataset_retention=timedelta(days=30),
            dry_run=dry_run,
        )

    mine = {fresh, unused, deleted_job, ran_recently, running}
    assert mine & set(gc(dry_run=True).datasets) == {unused, deleted_job}
    assert len(_stored(svc, unused)) == 1  # a dry run removes nothing
    assert mine & set(gc(dry_run=False).datasets) == {unused, deleted_job}
    assert _stored(svc, unused) == _stored(svc, deleted_job) == []
    with pg_session_factory() as session:
        assert session.get(Dataset, unused) is None and session.get(Dataset, deleted_job) is None
    for kept in (fresh, ran_recently, running):
        assert len(_stored(svc, kept)) == 1


def test_gc_command_names_the_datasets_it_removes(
    svc: dict[str, Any], pg_session_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.cli.server import admin

    dataset_id = _upload(svc)
    _set(pg_session_factory, Dataset, dataset_id, created_at=utcnow() - timedelta(days=3))
    settings = svc["settings"]
    for name, value in {
        "DIFFII_DATABASE_URL": settings.database_url, "DIFFII_STORAGE": "local",
        "DIFFII_STORAGE_DIR": str(settings.storage_dir), "DIFFII_HOME": str(settings.home),
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(admin, ["gc", "--dry-run", "--dataset-retention-days", "2"])
    assert result.exit_code == 0, result.output
    assert f"would remove unused dataset {dataset_id}" in result.output
    result = CliRunner().invoke(admin, ["gc", "--dataset-retention-days", "2"])
    assert f"removed unused dataset {dataset_id}" in result.output and _stored(svc, dataset_id) == []
    result = CliRunner().invoke(admin, ["gc", "--dataset-retention-days", "0"])
    assert result.exit_code == 2 and "dataset_retention_days" in result.output, result.output
