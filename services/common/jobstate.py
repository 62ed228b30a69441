"""Job-level state changes shared by the API (cancel) and the workers (fail, cancel, fan-in lock).

All are conditional updates, safe to race: a job that already ended is left as it is.
"""

from __future__ import annotations

from sqlalchemy import update
from sqlalchemy.orm import Session

from services.common.models import TERMINAL_JOB_STATUSES, Job, JobStatus, Shard, ShardStatus, utcnow

CANCEL_MESSAGE = "cancelled at the user's request"
OPEN_SHARD_STATUSES = (ShardStatus.waiting, ShardStatus.pending, ShardStatus.queued, ShardStatus.running)


def lock_job(session: Session, job_id: str) -> None:
    """Serialise the transactions that decide a job's next stage (fan-in, fail, cancel).

    Touching the job row takes its row lock on Postgres until commit, so a concurrent finisher waits
    and then reads with our changes visible; SQLite already serialises writers (BEGIN IMMEDIATE).
    """
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )


def close_open_shards(session: Session, job_id: str) -> None:
    """Every unfinished shard of the job -> cancelled. A worker running one sees that at its next
    heartbeat or stop check (between batches) and stops without writing anything more."""
    session.execute(
        update(Shard)
        .where(Shard.job_id == job_id, Shard.status.in_(OPEN_SHARD_STATUSES))
        .values(status=ShardStatus.cancelled, finished_at=utcnow(), lease_expires_at=None)
        .execution_options(synchronize_session=False)
    )


def _end(session: Session, job_id: str, status: JobStatus, **values: object) -> bool:
    now = utcnow()
    changed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.notin_(TERMINAL_JOB_STATUSES))
        .values(status=status, finished_at=now, updated_at=now, **values)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    close_open_shards(session, job_id)
    return bool(changed)


def fail_job(session: Session, job_id: str, message: str) -> bool:
    return _end(session, job_id, JobStatus.failed, message=message)


def finalize_cancel(session: Session, job_id: str) -> bool:
    return _end(session, job_id, JobStatus.cancelled, cancel_requested=True, message=CANCEL_MESSAGE)


def request_cancel(session: Session, job_id: str) -> bool:
    """Cancel a job now (for `POST /v1/jobs/{id}/cancel`); commits. False if it had already ended.

    The job is `cancelled` at once; running shards stop within one denoising batch, write no more
    images, and packaging never publishes an archive for it.
    """
    lock_job(session, job_id)
    changed = finalize_cancel(session, job_id)
    session.commit()
    return changed
