"""A worker's presence: its row in `workers` (name, task processes, last seen), which admission sums
to know how many shards may be in flight. Written by each worker's main process on a timer; removed
when the worker stops. A worker that dies without stopping ages out after `worker_seen_seconds`."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy.orm import Session

from services.common.models import WorkerPresence
from services.common.timeutil import utcnow

FORGET_AFTER = 10  # rows older than this many `worker_seen_seconds` are deleted (they count for nothing)


def report(session: Session, name: str, slots: int, seen_seconds: float) -> None:
    """This worker is alive with `slots` task processes (commits)."""
    now = utcnow()
    session.merge(WorkerPresence(name=name, slots=slots, seen_at=now))
    session.execute(
        delete(WorkerPresence).where(
            WorkerPresence.seen_at < now - timedelta(seconds=seen_seconds * FORGET_AFTER)
        )
    )
    session.commit()


def leave(session: Session, name: str) -> None:
    session.execute(delete(WorkerPresence).where(WorkerPresence.name == name))
    session.commit()
