"""Quotas under races, over real HTTP to a real `diffii serve` on the test Postgres: parallel uploads
against max_stored_bytes and parallel job submissions against max_active_jobs. Exactly the allowed
number succeed; every other request is refused naming the quota. Also the order of refusals: a
request that is invalid or over its own limits is 422 even when the owner is at max_active_jobs."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.dataset_builders import good_members, zip_bytes
from tests.served_api import served_api
from tests.service_helpers import auth

ARCHIVE = zip_bytes(good_members())
SMALL = {"model": "tiny", "concepts": {"steps": 1}, "inference_steps": 1, "inversion_steps": 1}
PARALLEL = 8


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, pg_url: str, redis_url: str) -> Iterator[str]:
    tmp: Path = tmp_path_factory.mktemp("races")
    settings = {
        "database_url": pg_url,
        "broker_url": redis_url,
        "storage": "local",
        "storage_dir": str(tmp / "objects"),
        "worker_slots": "10000",  # no worker runs: every job is admitted at once
        "max_stored_bytes": str(2 * len(ARCHIVE) + len(ARCHIVE) // 2),  # room for two uploads
        "max_active_jobs": "3",
    }
    with served_api(tmp / "home", **settings) as url:
        yield url


def _all_at_once(count: int, call: Callable[[httpx.Client], httpx.Response]) -> list[httpx.Response]:
    """`count` calls on their own connections, released together by a barrier."""
    barrier = threading.Barrier(count)

    def one(_: int) -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            barrier.wait(timeout=60)
            return call(client)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def _upload(server: str, headers: dict[str, str]) -> Callable[[httpx.Client], httpx.Response]:
    return lambda c: c.post(f"{server}/v1/datasets", headers=headers, files={"file": ("d.zip", ARCHIVE)})


def test_parallel_uploads_pass_the_stored_bytes_quota_exactly_twice(server: str, make_api_key: Any) -> None:
    headers = auth(make_api_key())
    answers = _all_at_once(PARALLEL, _upload(server, headers))
    codes = sorted(a.status_code for a in answers)
    assert codes == [201] * 2 + [413] * (PARALLEL - 2), [a.text for a in answers]
    for refused in (a for a in answers if a.status_code == 413):
        assert (
            refused.json()["limit"] == "max_stored_bytes" and "max_stored_bytes" in refused.json()["detail"]
        )
    listed = httpx.get(f"{server}/v1/datasets", headers=headers, timeout=30).json()["datasets"]
    assert len(listed) == 2  # no row of a refused upload


def test_parallel_submissions_pass_the_active_jobs_quota_exactly_three_times(
    server: str, make_api_key: Any
) -> None:
    headers = auth(make_api_key())
    upload = _upload(server, headers)(httpx.Client(timeout=60))
    assert upload.status_code == 201, upload.text
    job = {**SMALL, "dataset_id": upload.json()["id"]}
    answers = _all_at_once(PARALLEL, lambda c: c.post(f"{server}/v1/jobs", headers=headers, json=job))
    codes = sorted(a.status_code for a in answers)
    assert codes == [202] * 3 + [429] * (PARALLEL - 3), [a.text for a in answers]
    for refused in (a for a in answers if a.status_code == 429):
        assert refused.json()["limit"] == "max_active_jobs" and "Retry-After" in refused.headers
    listed = httpx.get(f"{server}/v1/jobs", headers=headers, timeout=30).json()["jobs"]
    assert len(listed) == 3

    # At the active-jobs limit, a request that could never run is told so (422), not "retry later".
    over_cost = {**job, "concepts": {"steps": 200_000, "batch_size": 64, "gradient_accumulation": 64}}
    refused = httpx.post(f"{server}/v1/jobs", headers=headers, json=over_cost, timeout=30)
    assert refused.status_code == 422 and refused.json()["limit"] == "max_job_cost", refused.text
    invalid = httpx.post(f"{server}/v1/jobs", headers=headers, json={**job, "expansion": -1}, timeout=30)
    assert invalid.status_code == 422, invalid.text
    empty = httpx.post(f"{server}/v1/jobs", headers=headers, json={**job, "expansion": 0.01}, timeout=30)
    assert empty.status_code == 422, empty.text


def test_parallel_uploads_on_the_embedded_sqlite_pass_the_quota_exactly_twice(tmp_path: Path) -> None:
    """The embedded default: SQLite's single writer (BEGIN IMMEDIATE) is the owner's lock."""
    from services.common.auth import create_key
    from services.common.db import dispose, make_session_factory, session_scope

    home = tmp_path / "home"
    limit = str(2 * len(ARCHIVE) + len(ARCHIVE) // 2)
    with served_api(home, max_stored_bytes=limit) as server:  # `diffii serve` migrates the SQLite file
        factory = make_session_factory(f"sqlite:///{home / 'diffii.db'}")
        try:
            with session_scope(factory) as session:
                headers = auth(create_key(session, "sqlite-racer").key)
        finally:
            dispose(factory)
        answers = _all_at_once(PARALLEL, _upload(server, headers))
    codes = sorted(a.status_code for a in answers)
    assert codes == [201] * 2 + [413] * (PARALLEL - 2), [a.text for a in answers]
