"""Fixtures of the lifecycle tests: a migrated database (Postgres and SQLite) and small jobs in it.

Dispatch goes to kombu's in-memory transport, so every race and recovery path is checked in
milliseconds without a broker round trip.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from services.common import dispatch
from services.common.db import dispose, make_session_factory
from services.common.lifecycle import shards as leases
from services.common.lifecycle.shards import Claim
from services.common.migrate import upgrade_to_head
from services.common.models import Job, JobStatus, Owner, Shard, ShardKind, ShardStatus, utcnow

LEASE = 30.0


@pytest.fixture(params=["postgres", "sqlite"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "postgres":
        url = request.getfixturevalue("make_pg_database")()
    else:
        url = f"sqlite:///{tmp_path / 'state.db'}"
    upgrade_to_head(url)
    factory = make_session_factory(url)
    # Room for every shard of these tests; admission order has tests of its own (test_admission.py).
    dispatch.configure(
        dispatch.DispatchSettings(_env_file=None, home=tmp_path, broker_url="memory://", worker_slots=64)
    )
    yield factory
    dispatch.configure(None)
    dispose(factory)


def make_job(
    sessions: Any,
    generate: int = 3,
    status: JobStatus = JobStatus.generating,
    shard_status: ShardStatus = ShardStatus.queued,
    owner: str | None = None,
    priority: int = 0,
) -> tuple[str, list[str]]:
    """A job in `status` with `generate` generate shards (queued: admitted and sent, unless told
    otherwise) and a waiting package shard; of a new owner, or of the named one."""
    with sessions() as s:
        row = s.scalar(select(Owner).where(Owner.name == owner)) if owner else None
        if row is None:
            row = Owner(name=owner or f"o-{utcnow().timestamp()}-{id(s)}")
            s.add(row)
            s.flush()
        job = Job(owner_id=row.id, params={}, status=status, priority=priority)
        s.add(job)
        s.flush()
        ids = []
        for i in range(generate):
            shard = Shard(
                job_id=job.id, seq=i + 1, kind=ShardKind.generate, class_index=i, class_name=f"c{i}",
                start=0, stop=4, status=shard_status, max_attempts=3,
            )  # fmt: skip
            s.add(shard)
            s.flush()
            ids.append(shard.id)
        s.add(Shard(job_id=job.id, seq=generate + 1, kind=ShardKind.package, status=ShardStatus.waiting))
        s.commit()
        return job.id, ids


def claim(sessions: Any, shard_id: str, worker: str = "w1") -> Claim | str:
    """A worker receives the shard's message: first an admission pass (a retried shard is pending
    until one admits it; only then is a message sent), then the claim."""
    with sessions() as s:
        dispatch.dispatch(s)
        return leases.claim(s, shard_id, worker, LEASE)
