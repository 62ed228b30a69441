"""Retention: DELETE /v1/jobs/{id} and `diffii admin gc` remove what a job left, and nothing else."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from services.common import keys
from services.common.db import session_scope
from services.common.models import Job, JobStatus, Shard, utcnow
from services.common.retention import collect
from services.common.storage import make_storage
from tests.dataset_builders import good_members, zip_bytes
from tests.service_helpers import auth


@pytest.fixture
def service(api_client_factory: Any, make_api_key: Any) -> dict[str, Any]:
    client, settings = api_client_factory()
    key = make_api_key()
    upload = client.post(
        "/v1/datasets", headers=auth(key), files={"file": ("b.zip", zip_bytes(good_members()))}
    )
    assert upload.status_code == 201, upload.text
    return {
        "client": client,
        "settings": settings,
        "storage": make_storage(settings),
        "headers": auth(key),
        "dataset_id": upload.json()["id"],
    }


def _job(svc: dict[str, Any], sessions: Any, status: JobStatus, finished_days_ago: float = 0) -> str:
    """A job in `status` with a full set of stored objects (pool, concepts, images, archive)."""
    r = svc["client"].post("/v1/jobs", headers=svc["headers"], json={"dataset_id": svc["dataset_id"]})
    job_id = r.json()["id"]
    storage = svc["storage"]
    for key in (
        keys.pool(job_id, 0), keys.concepts_prefix(job_id) + "lora.safetensors",
        keys.checkpoint_prefix(job_id) + "step.pt", keys.image_png(job_id, 0, 0),
        keys.image_meta(job_id, 0, 0), keys.archive(job_id),
    ):  # fmt: skip
        storage.put_bytes(key, b"x")
    with session_scope(sessions) as s:
        job = s.get(Job, job_id)
        job.status = status
        job.archive_key = keys.archive(job_id) if status == JobStatus.succeeded else None
        job.finished_at = utcnow() - timedelta(days=finished_days_ago)
    return job_id


def _objects(svc: dict[str, Any], job_id: str) -> list[str]:
    return [k.rsplit("/", 1)[-1] for k in svc["storage"].list(keys.job_prefix(job_id))]


def test_delete_removes_the_jobs_objects_and_rows_and_nothing_else(
    service: dict[str, Any], pg_session_factory: Any
) -> None:
    doomed = _job(service, pg_session_factory, JobStatus.succeeded)
    neighbour = _job(service, pg_session_factory, JobStatus.succeeded)
    before = _objects(service, neighbour)

    r = service["client"].delete(f"/v1/jobs/{doomed}", headers=service["headers"])
    assert r.status_code == 204, r.text
    assert _objects(service, doomed) == []
    with pg_session_factory() as s:
        assert s.get(Job, doomed) is None
        assert s.scalars(select(Shard).where(Shard.job_id == doomed)).all() == []
    assert service["client"].get(f"/v1/jobs/{doomed}", headers=service["headers"]).status_code == 404
    assert _objects(service, neighbour) == before and len(before) == 6


def test_delete_of_a_running_job_is_409_and_removes_nothing(
    service: dict[str, Any], pg_session_factory: Any
) -> None:
    job_id = _job(service, pg_session_factory, JobStatus.generating)
    r = service["client"].delete(f"/v1/jobs/{job_id}", headers=service["headers"])
    assert r.status_code == 409 and "cancel it" in r.json()["detail"]
    assert len(_objects(service, job_id)) == 6


def test_another_owner_cannot_delete_a_job(
    service: dict[str, Any], pg_session_factory: Any, make_api_key: Any
) -> None:
    job_id = _job(service, pg_session_factory, JobStatus.failed)
    r = service["client"].delete(f"/v1/jobs/{job_id}", headers=auth(make_api_key()))
    assert r.status_code == 404
    assert len(_objects(service, job_id)) == 6


def test_gc_prunes_then_expires_ended_jobs_only(service: dict[str, Any], pg_session_factory: Any) -> None:
    fresh = _job(service, pg_session_factory, JobStatus.succeeded, finished_days_ago=0.1)
    old = _job(service, pg_session_factory, JobStatus.succeeded, finished_days_ago=3)
    ancient = _job(service, pg_session_factory, JobStatus.cancelled, finished_days_ago=40)
    running = _job(service, pg_session_factory, JobStatus.generating, finished_days_ago=40)  # bogus date

    report = collect(
        pg_session_factory,
        service["storage"],
        retention=timedelta(days=30),
        intermediate_retention=timedelta(days=1),
    )
    # Other tests' jobs share the database: look only at this test's.
    assert old in report.pruned and ancient in report.expired
    assert not {fresh, running} & {*report.pruned, *report.expired}
    assert _objects(service, old) == ["archive.zip"]  # the archive outlives the intermediates
    assert _objects(service, ancient) == []
    assert len(_objects(service, fresh)) == len(_objects(service, running)) == 6

    r = service["client"].get(f"/v1/jobs/{ancient}/archive", headers=service["headers"])
    assert r.status_code == 409 and "retention" in r.json()["detail"]
    assert service["client"].get(f"/v1/jobs/{old}/archive", headers=service["headers"]).status_code == 307
    again = collect(
        pg_session_factory,
        service["storage"],
        retention=timedelta(days=30),
        intermediate_retention=timedelta(days=1),
    )
    assert not {old, ancient} & {*again.pruned, *again.expired}  # marked: not listed again


def test_gc_command_dry_run_removes_nothing(
    service: dict[str, Any], pg_session_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.cli.server import admin

    old = _job(service, pg_session_factory, JobStatus.failed, finished_days_ago=3)
    settings = service["settings"]
    for name, value in {
        "DIFFII_DATABASE_URL": settings.database_url, "DIFFII_STORAGE": "local",
        "DIFFII_STORAGE_DIR": str(settings.storage_dir), "DIFFII_HOME": str(settings.home),
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(admin, ["gc", "--dry-run"])
    assert result.exit_code == 0, result.output
    assert f"would remove the intermediate objects of job {old}" in result.output
    assert len(_objects(service, old)) == 6
    result = CliRunner().invoke(admin, ["gc", "--intermediate-retention-days", "0"])
    assert result.exit_code == 2 and "intermediate_retention_days" in result.output, result.output
