"""Job transitions. Each is one conditional UPDATE built from the table; racing actors cannot break it.

Callers own the transaction: these functions never commit, except `request_cancel`, which is a whole
API operation.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from services.common.lifecycle.moves import move_where
from services.common.lifecycle.table import JOB_TRANSITIONS, OPEN_SHARD, Actor, lookup
from services.common.models import Job, JobStatus, Shard, ShardStatus
from services.common.statuses import TERMINAL_JOB_STATUSES
from services.common.timeutil import utcnow

CANCEL_MESSAGE = "cancelled at the user's request"


def initial_status() -> JobStatus:
    """The status the table gives a new job."""
    _, status = lookup(JOB_TRANSITIONS, "submit", Actor.api)
    assert status is not None
    return JobStatus(status)


def lock(session: Session, job_id: str) -> None:
    """Serialise the transactions that decide a job's next state (fan-in, fail, cancel).

    Touching the job row takes its row lock on Postgres until commit, so a concurrent finisher waits
    and then reads with our changes visible; SQLite already serialises writers (BEGIN IMMEDIATE).
    """
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def move(
    session: Session,
    job_id: str,
    event: str,
    actor: Actor,
    target: JobStatus | None = None,
    **values: Any,
) -> bool:
    """Apply a transition of the table to the job if it is in one of the event's source states."""
    sources, to = lookup(JOB_TRANSITIONS, event, actor, target)
    now = utcnow()
    if to in TERMINAL_JOB_STATUSES:
        values.setdefault("finished_at", now)
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(sources))
        .values(status=to, updated_at=now, **values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def close_open_shards(session: Session, job_id: str, actor: Actor) -> int:
    """Every unfinished shard of an ended job -> cancelled. A worker still running one sees that at
    its next heartbeat or stop check and stops without writing anything more."""
    return move_where(session, (Shard.job_id == job_id, Shard.status.in_(OPEN_SHARD)), "close", actor)


def fail(session: Session, job_id: str, message: str, actor: Actor) -> bool:
    changed = move(session, job_id, "fail", actor, message=message)
    if changed:
        close_open_shards(session, job_id, actor)
    return changed


def running_shards(session: Session, job_id: str) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(Shard)
            .where(Shard.job_id == job_id, Shard.status == ShardStatus.running)
        )
        or 0
    )


def request_cancel(session: Session, job_id: str) -> JobStatus | None:
    """`POST /v1/jobs/{id}/cancel`; commits. Returns the job's new status, None if it had ended.

    With no shard running the job is `cancelled` at once. Otherwise it is `cancelling`: shards not yet
    running are closed now, running ones stop at their next batch boundary and the last one to stop
    (or the sweeper, if its worker died) makes the job `cancelled`.
    """
    lock(session, job_id)
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    if status == JobStatus.cancelling:
        session.commit()
        return status
    closing = (
        Shard.job_id == job_id,
        Shard.status.in_((ShardStatus.waiting, ShardStatus.pending, ShardStatus.queued)),
    )
    if running_shards(session, job_id) == 0:
        changed = move(
            session,
            job_id,
            "cancel",
            Actor.api,
            JobStatus.cancelled,
            cancel_requested=True,
            message=CANCEL_MESSAGE,
        )
        new = JobStatus.cancelled
    else:
        changed = move(session, job_id, "cancel", Actor.api, JobStatus.cancelling, cancel_requested=True)
        new = JobStatus.cancelling
    if changed:
        move_where(session, closing, "close", Actor.api)
    session.commit()
    return new if changed else None


def finish_cancel(session: Session, job_id: str, actor: Actor) -> bool:
    """cancelling -> cancelled once no shard of the job runs any more (the caller holds the lock)."""
    if running_shards(session, job_id):
        return False
    changed = move(session, job_id, "stopped", actor, message=CANCEL_MESSAGE)
    if changed:
        close_open_shards(session, job_id, actor)
    return changed


def delete_rows(session: Session, job_id: str, actor: Actor) -> bool:
    """Remove an ended job's row; its shards go with it (ON DELETE CASCADE). Objects go first."""
    sources, _ = lookup(JOB_TRANSITIONS, "delete", actor)
    result = session.execute(
        delete(Job)
        .where(Job.id == job_id, Job.status.in_(sources))
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
