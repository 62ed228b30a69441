"""Fixtures of the lifecycle tests: a migrated database (Postgres and SQLite) and small jobs in it.

Dispatch goes to kombu's in-memory transport, so every race and recovery path is checked in
milliseconds without a broker round trip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.common import dispatch
from services.common.db import dispose, make_session_factory
from services.common.lifecycle import shards as leases
from services.common.lifecycle.shards import Claim
from services.common.models import Job, JobStatus, Owner, Shard, ShardKind, ShardStatus, utcnow
from services.common.schema import upgrade_to_head

LEASE = 30.0


@pytest.fixture(params=["postgres", "sqlite"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "postgres":
        url = request.getfixturevalue("make_pg_database")()
    else:
        url = f"sqlite:///{tmp_path / 'state.db'}"
    upgrade_to_head(url)
    factory = make_session_factory(url)
    dispatch.configure(dispatch.DispatchSettings(_env_file=None, home=tmp_path, broker_url="memory://"))
    yield factory
    dispatch.configure(None)
    dispose(factory)


def make_job(
    sessions: Any, generate: int = 3, status: JobStatus = JobStatus.generating
) -> tuple[str, list[str]]:
    """A job in `status` with `generate` pending generate shards and a waiting package shard."""
    with sessions() as s:
        owner = Owner(name=f"o-{utcnow().timestamp()}-{id(s)}")
        s.add(owner)
        s.flush()
        job = Job(owner_id=owner.id, params={}, status=status)
        s.add(job)
        s.flush()
        ids = []
        for i in range(generate):
            shard = Shard(
                job_id=job.id, seq=i + 1, kind=ShardKind.generate, class_index=i, class_name=f"c{i}",
                start=0, stop=4, status=ShardStatus.pending, max_attempts=3,
            )  # fmt: skip
            s.add(shard)
            s.flush()
            ids.append(shard.id)
        s.add(Shard(job_id=job.id, seq=generate + 1, kind=ShardKind.package, status=ShardStatus.waiting))
        s.commit()
        return job.id, ids


def claim(sessions: Any, shard_id: str, worker: str = "w1") -> Claim | str:
    with sessions() as s:
        return leases.claim(s, shard_id, worker, LEASE)
