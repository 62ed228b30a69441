"""Shared fixtures: real Postgres, Redis and S3 (moto's server over HTTP), and API helpers.

- `pg_url`: a fresh Postgres database for the test session, migrated to head, dropped at the end.
- `make_pg_database`: more empty databases (migration tests), dropped at the end.
- `redis_url`: a dedicated Redis database number, flushed before and after the session.
- `moto_s3`: a moto S3 server process on a free loopback port; yields S3 settings kwargs.
- `s3_bucket_settings`: a new, empty bucket on that server per test (settings kwargs).
- `api_settings_factory` / `make_api_key`: an API's settings on those components, and keys.

Services are reached at DIFFII_TEST_PG_ADMIN_URL (postgresql://postgres@127.0.0.1:5432/postgres) and
DIFFII_TEST_REDIS_URL (redis://127.0.0.1:6379/15); `make services` starts them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.dataset_builders import good_members, zip_bytes
from tests.service_helpers import auth, free_port, s3_storage_kwargs, stop_process, wait_until

PG_ADMIN_URL = os.environ.get("DIFFII_TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("DIFFII_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
S3_CREDENTIALS = {"s3_access_key_id": "testing", "s3_secret_access_key": "testing", "s3_region": "us-east-1"}


# -- Postgres --------------------------------------------------------------------------------------


def _sqlalchemy_url(libpq_url: str, database: str) -> str:
    base = libpq_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{database}"


@pytest.fixture(scope="session")
def make_pg_database() -> Iterator[Callable[[], str]]:
    """A factory of empty Postgres databases (SQLAlchemy URLs); all dropped when the session ends."""
    import psycopg

    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"Postgres is not reachable at {PG_ADMIN_URL} (run `make services`): {exc}")
    created: list[str] = []

    def create() -> str:
        name = f"diffii_test_{uuid.uuid4().hex[:12]}"
        admin.execute(f'CREATE DATABASE "{name}"')
        created.append(name)
        return _sqlalchemy_url(PG_ADMIN_URL, name)

    try:
        yield create
    finally:
        for name in created:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def pg_url(make_pg_database: Callable[[], str]) -> str:
    """The session's Postgres database, migrated to the newest schema."""
    from services.common.migrate import upgrade_to_head

    url = make_pg_database()
    upgrade_to_head(url)
    return url


@pytest.fixture(scope="session")
def pg_session_factory(pg_url: str) -> Iterator[Any]:
    from services.common.db import dispose, make_session_factory

    factory = make_session_factory(pg_url)
    yield factory
    dispose(factory)


# -- Redis -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis database number reserved for tests, emptied before and after the session."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=5)
    try:
        client.flushdb()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} (run `make services`): {exc}")
    yield REDIS_URL
    client.flushdb()
    client.close()


# -- S3 (moto server) ------------------------------------------------------------------------------


def _moto_command(port: int) -> list[str]:
    executable = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which(
        "moto_server"
    )
    if executable:
        return [executable, "-H", "127.0.0.1", "-p", str(port)]
    return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """moto's S3 server as a separate process; yields settings kwargs (storage, endpoint, credentials)."""
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    process = subprocess.Popen(_moto_command(port), stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {process.returncode}; see {log.name}")
        try:
            return httpx.get(f"{endpoint}/moto-api/", timeout=1).status_code < 500
        except httpx.TransportError:
            return False

    try:
        wait_until(answers, 30, "moto server start")
        yield {
            "storage": "s3",
            "s3_endpoint_url": endpoint,
            "s3_bucket": "diffii-test",
            "s3_addressing_style": "path",
            **S3_CREDENTIALS,
        }
    finally:
        stop_process(process)
        log.close()


@pytest.fixture
def s3_bucket_settings(moto_s3: dict[str, Any]) -> dict[str, Any]:
    """A new empty bucket per test, so tests can assert on everything in it."""
    from services.common.storage_s3 import S3Storage

    settings = {**moto_s3, "s3_bucket": f"t-{uuid.uuid4().hex[:16]}"}
    S3Storage(**s3_storage_kwargs(settings)).ensure()
    return settings


# -- API -------------------------------------------------------------------------------------------


@pytest.fixture
def api_settings_factory(pg_url: str, redis_url: str, tmp_path: Path) -> Callable[..., Any]:
    """ApiSettings on the session's Postgres and Redis with a local store in tmp_path; kwargs override."""
    from services.api.settings import ApiSettings

    def make(**overrides: Any) -> ApiSettings:
        values: dict[str, Any] = {
            "home": tmp_path / "home",
            "database_url": pg_url,
            "broker_url": redis_url,
            "storage": "local",
            "storage_dir": tmp_path / "objects",
            "signing_secret": "test-signing-secret",
            "public_base_url": "http://testserver",
            # No worker consumes these tests' messages: room for every job's shard in flight, so a
            # submitted job is admitted at once (admission order has tests of its own).
            "worker_slots": 10_000,
            # Tests send requests as fast as they can; the rate limit has tests of its own.
            "rate_limit_per_second": 0,
        }
        values.update(overrides)
        # _env_file=None and explicit values: the developer's DIFFII_* environment must not leak in.
        return ApiSettings(_env_file=None, **values)

    return make


@pytest.fixture
def make_api_key(pg_session_factory: Any) -> Callable[[str | None], str]:
    """Create a key for an owner (a new unique owner by default) and return the plaintext key."""
    from services.common.auth import create_key
    from services.common.db import session_scope

    def make(owner: str | None = None) -> str:
        with session_scope(pg_session_factory) as session:
            return create_key(session, owner or f"owner-{uuid.uuid4().hex[:10]}").key

    return make


@pytest.fixture
def api_client_factory(api_settings_factory: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
    """`make(**settings_overrides) -> (TestClient, settings)`: the ASGI app in-process, over httpx."""
    from fastapi.testclient import TestClient

    from services.api.app import create_app

    clients: list[Any] = []

    def make(**overrides: Any) -> tuple[Any, Any]:
        settings = api_settings_factory(**overrides)
        client = TestClient(create_app(settings), follow_redirects=False)
        client.__enter__()
        clients.append(client)
        return client, settings

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def api(api_client_factory: Callable[..., Any]) -> Any:
    """A TestClient on the default test settings (Postgres, Redis, local store in tmp_path)."""
    client, _settings = api_client_factory()
    return client


@pytest.fixture
def owner(api: Any, make_api_key: Any) -> dict[str, Any]:
    """A fresh owner with one uploaded dataset: its key, headers and dataset id."""
    key = make_api_key()
    response = api.post(
        "/v1/datasets", headers=auth(key), files={"file": ("b.zip", zip_bytes(good_members()))}
    )
    assert response.status_code == 201, response.text
    return {"key": key, "headers": auth(key), "dataset_id": response.json()["id"]}
