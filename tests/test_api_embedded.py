"""The API on the embedded defaults: SQLite state, SQLite broker, local store under DIFFII_HOME."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select

from services.api.app import create_app
from services.api.settings import ApiSettings
from services.cli.server import admin, migrate
from services.common.db import dispose, make_session_factory
from services.common.models import Shard, ShardStatus
from tests.dataset_builders import good_members, zip_bytes
from tests.service_helpers import auth


def test_embedded_defaults_end_to_end(tmp_path: Path) -> None:
    home = tmp_path / "diffii-home"
    env = {
        "DIFFII_HOME": str(home),
        "DIFFII_DATABASE_URL": "",
        "DIFFII_BROKER_URL": "",
        "DIFFII_STORAGE": "local",
    }
    runner = CliRunner()
    assert runner.invoke(migrate, [], env=env).exit_code == 0
    created = runner.invoke(admin, ["create-key", "--owner", "me"], env=env)
    assert created.exit_code == 0, created.output
    key = created.stdout.strip()

    settings = ApiSettings(_env_file=None, home=home)
    assert settings.database_url == f"sqlite:///{home / 'diffii.db'}"
    assert settings.broker_url == f"sqla+sqlite:///{home / 'broker.db'}"
    with TestClient(create_app(settings), follow_redirects=False) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text

        upload = client.post(
            "/v1/datasets", headers=auth(key), files={"file": ("b.zip", zip_bytes(good_members()))}
        )
        assert upload.status_code == 201, upload.text
        dataset_id = upload.json()["id"]
        assert (home / "objects" / "datasets" / dataset_id / "source.zip").is_file()

        job = client.post("/v1/jobs", headers=auth(key), json={"dataset_id": dataset_id})
        assert job.status_code == 202, job.text
        pages = client.get("/v1/jobs", headers=auth(key), params={"limit": 1}).json()
        assert [j["id"] for j in pages["jobs"]] == [job.json()["id"]]

    factory = make_session_factory(settings)
    with factory() as session:
        shard = session.scalar(select(Shard).where(Shard.job_id == job.json()["id"]))
        assert shard is not None and shard.status == ShardStatus.queued  # sent through the SQLite broker
    dispose(factory)
