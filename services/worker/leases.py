"""Claiming, heartbeating and finishing shards with conditional updates.

Every state change of a shard is an UPDATE whose WHERE clause names the state it expects (status,
worker, attempt number). Exactly one of several racing workers, sweepers or duplicate broker
deliveries gets rowcount 1; the others see 0 and back off. This needs no SELECT ... FOR UPDATE, so it
behaves the same on Postgres and on SQLite. The attempt number doubles as a fencing token: a worker
whose lease was taken over can no longer write anything for that shard.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, func, select, update
from sqlalchemy.orm import Session

from services.common.jobstate import OPEN_SHARD_STATUSES, fail_job, finalize_cancel, lock_job
from services.common.models import (
    TERMINAL_JOB_STATUSES,
    Job,
    JobStatus,
    Shard,
    ShardKind,
    ShardStatus,
    utcnow,
)

MAX_ERROR_CHARS = 2000


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


class LeaseLost(Exception):
    """This worker no longer owns the shard (the sweeper re-queued it, or the job ended)."""


@dataclass(frozen=True)
class Claim:
    shard_id: str
    job_id: str
    kind: ShardKind
    attempt: int
    max_attempts: int
    worker: str
    class_index: int | None
    class_name: str | None
    start: int
    stop: int


def owned(claim: Claim) -> ColumnElement[bool]:
    """The WHERE clause that holds only while this claim is still the shard's current attempt."""
    return and_(
        Shard.id == claim.shard_id,
        Shard.status == ShardStatus.running,
        Shard.worker == claim.worker,
        Shard.attempts == claim.attempt,
    )


def update_shards(session: Session, where: ColumnElement[bool], **values: Any) -> int:
    """A conditional UPDATE of shards; the row count says whether the expected state still held."""
    result = session.execute(
        update(Shard).where(where).values(**values).execution_options(synchronize_session=False)
    )
    return result.rowcount  # type: ignore[attr-defined]


def claim(session: Session, shard_id: str, worker: str, lease_seconds: float) -> Claim | str:
    """Take the shard for this worker; returns the Claim, or why not (duplicate, cancelled, unknown)."""
    row = session.execute(
        select(Shard, Job.status, Job.cancel_requested)
        .join(Job, Job.id == Shard.job_id)
        .where(Shard.id == shard_id)
    ).one_or_none()
    if row is None:
        return "unknown shard"
    shard, job_status, cancel_requested = row
    if job_status in TERMINAL_JOB_STATUSES or cancel_requested:
        # A message that outlived its job: close the row so nothing waits for it.
        update_shards(
            session,
            and_(Shard.id == shard_id, Shard.status.in_(OPEN_SHARD_STATUSES[:3])),
            status=ShardStatus.cancelled,
            finished_at=utcnow(),
        )
        if cancel_requested:
            finalize_cancel(session, shard.job_id)
        session.commit()
        return f"job is {job_status}"
    if shard.status not in (ShardStatus.pending, ShardStatus.queued):
        session.commit()
        return f"shard is {shard.status}"  # a duplicate delivery; someone else has or had it
    now = utcnow()
    ready = as_utc(shard.enqueued_at)
    won = update_shards(
        session,
        and_(
            Shard.id == shard_id,
            Shard.status.in_((ShardStatus.pending, ShardStatus.queued)),
            Shard.attempts == shard.attempts,
        ),
        status=ShardStatus.running,
        attempts=shard.attempts + 1,
        worker=worker,
        started_at=now,
        heartbeat_at=now,
        lease_expires_at=now + timedelta(seconds=lease_seconds),
        finished_at=None,
        queue_wait_s=(now - ready).total_seconds() if ready else None,
    )
    if not won:
        session.commit()
        return "claimed by another worker"
    if shard.kind == ShardKind.prepare:
        session.execute(
            update(Job)
            .where(Job.id == shard.job_id, Job.status == JobStatus.queued)
            .values(status=JobStatus.preparing, updated_at=now)
            .execution_options(synchronize_session=False)
        )
    session.commit()
    return Claim(
        shard_id=shard.id,
        job_id=shard.job_id,
        kind=ShardKind(shard.kind),
        attempt=shard.attempts + 1,
        max_attempts=shard.max_attempts,
        worker=worker,
        class_index=shard.class_index,
        class_name=shard.class_name,
        start=shard.start,
        stop=shard.stop,
    )


class Signal(enum.StrEnum):
    ok = "ok"
    lost = "lost"  # the shard is no longer ours
    stop = "stop"  # the job was cancelled or has ended


def heartbeat(session: Session, c: Claim, lease_seconds: float, images_done: int | None = None) -> Signal:
    """Extend the lease (and record progress); tells the caller whether to keep going."""
    now = utcnow()
    values: dict[str, Any] = {"heartbeat_at": now, "lease_expires_at": now + timedelta(seconds=lease_seconds)}
    if images_done is not None:
        values["images_done"] = images_done
    alive = update_shards(session, owned(c), **values)
    job = session.execute(select(Job.status, Job.cancel_requested).where(Job.id == c.job_id)).one_or_none()
    session.commit()
    if not alive:
        return Signal.lost
    if job is None or job.cancel_requested or job.status in TERMINAL_JOB_STATUSES:
        return Signal.stop
    return Signal.ok


def check(session: Session, c: Claim) -> Signal:
    """Read-only variant of heartbeat, for should_stop polls between batches."""
    row = session.execute(
        select(Shard.status, Shard.worker, Shard.attempts, Job.status, Job.cancel_requested)
        .join(Job, Job.id == Shard.job_id)
        .where(Shard.id == c.shard_id)
    ).one_or_none()
    session.commit()
    if row is None:
        return Signal.lost
    status, worker, attempts, job_status, cancel = row
    if status != ShardStatus.running or worker != c.worker or attempts != c.attempt:
        return Signal.lost
    if cancel or job_status in TERMINAL_JOB_STATUSES:
        return Signal.stop
    return Signal.ok


def succeed(session: Session, c: Claim, run_seconds: float, **values: Any) -> None:
    """Mark the shard done inside the caller's transaction; LeaseLost if it is no longer ours."""
    done = update_shards(
        session,
        owned(c),
        status=ShardStatus.succeeded,
        finished_at=utcnow(),
        lease_expires_at=None,
        error=None,
        run_s=run_seconds,
        **values,
    )
    if not done:
        raise LeaseLost(c.shard_id)


def release(session: Session, c: Claim, status: ShardStatus, error: str | None = None) -> bool:
    """End our attempt with a terminal status (cancelled/failed) if we still own it."""
    return bool(
        update_shards(
            session, owned(c), status=status, finished_at=utcnow(), lease_expires_at=None, error=error
        )
    )


def error_text(exc: BaseException) -> str:
    from diffii_core.errors import DiffiiError

    text = str(exc) if isinstance(exc, DiffiiError) and str(exc) else f"{type(exc).__name__}: {exc}"
    return text[:MAX_ERROR_CHARS]


def failure_message(kind: ShardKind | str, class_name: str | None, attempts: int, cause: str) -> str:
    """What the user reads on a failed job: which part failed, how often, and why."""
    tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
    what = {
        ShardKind.prepare: "preparing the dataset",
        ShardKind.learn: "concept learning",
        ShardKind.generate: f"class {class_name!r}",
        ShardKind.package: "packaging the archive",
    }.get(ShardKind(kind), str(kind))
    return f"{what} failed after {tries}: {cause}"


def fail_attempt(session: Session, c: Claim, exc: BaseException, *, permanent: bool = False) -> list[str]:
    """Record a failed attempt: retry (back to pending) or, when out of attempts, fail the job.

    Returns the shard ids to dispatch after commit. Permanent errors (the dataset or the model is
    unusable) fail the job at once with the error's own message, since a retry cannot help.
    """
    cause = error_text(exc)
    lock_job(session, c.job_id)
    if not permanent and c.attempt < c.max_attempts:
        retried = update_shards(
            session,
            owned(c),
            status=ShardStatus.pending,
            worker=None,
            lease_expires_at=None,
            enqueued_at=utcnow(),
            error=cause,
        )
        session.commit()
        return [c.shard_id] if retried else []
    if not release(session, c, ShardStatus.failed, cause):
        session.commit()
        return []
    message = cause if permanent else failure_message(c.kind, c.class_name, c.attempt, cause)
    fail_job(session, c.job_id, message)
    session.commit()
    return []


def make_ready(session: Session, job_id: str, kinds: tuple[ShardKind, ...]) -> list[str]:
    """waiting -> pending for the job's shards of these kinds; returns their ids to dispatch."""
    ids = list(
        session.scalars(
            select(Shard.id).where(
                Shard.job_id == job_id, Shard.kind.in_(kinds), Shard.status == ShardStatus.waiting
            )
        )
    )
    if ids:
        update_shards(
            session,
            and_(Shard.id.in_(ids), Shard.status == ShardStatus.waiting),
            status=ShardStatus.pending,
            enqueued_at=utcnow(),
        )
    return ids


def finish_generate(session: Session, c: Claim, run_seconds: float) -> list[str]:
    """Mark a generate shard done and, if it was the job's last one, make packaging ready.

    Fan-in decided by the database: with the job row locked, the finisher that sees no other open
    generate shard is the last one, and it alone moves the job to packaging. Returns the package
    shard id to dispatch after commit (or nothing).
    """
    lock_job(session, c.job_id)
    succeed(session, c, run_seconds, images_done=c.stop - c.start)
    if open_count(session, c.job_id, ShardKind.generate) == 0 and set_job_status(
        session, c.job_id, JobStatus.packaging, expect=(JobStatus.generating,)
    ):
        return make_ready(session, c.job_id, (ShardKind.package,))
    return []


def open_count(session: Session, job_id: str, kind: ShardKind) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(Shard)
            .where(Shard.job_id == job_id, Shard.kind == kind, Shard.status != ShardStatus.succeeded)
        )
        or 0
    )


def set_job_status(
    session: Session, job_id: str, status: JobStatus, *, expect: tuple[JobStatus, ...], **values: Any
) -> bool:
    now = utcnow()
    return bool(
        session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_(expect), Job.cancel_requested.is_(False))
            .values(status=status, updated_at=now, **values)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
    )


__all__ = [
    "OPEN_SHARD_STATUSES",
    "Claim",
    "LeaseLost",
    "Signal",
    "claim",
    "fail_job",
    "finalize_cancel",
    "lock_job",
]
