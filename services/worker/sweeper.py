"""Recovery sweep: nothing stays queued forever, no dead worker keeps a shard.

Runs periodically in every worker's main process (and can run standalone: `diffii sweeper`). Every
action is a conditional update, so any number of sweepers may run at once without harm.

1. A running shard whose lease expired (its worker died or hung) goes back to pending, counting the
   attempt; out of attempts, the job fails naming the class. Shards of ended jobs are closed instead.
2. A pending shard not sent within `resend_after` (the process died between commit and publish, or
   the broker was down) is sent. A queued shard is re-sent when its message looks lost: it waited
   that long and either no shard is running anywhere, or a same-kind shard sent well after it has
   already been picked up (the queue is FIFO, so it should have gone first).
3. A job whose cancel was requested and that has no live running shard becomes cancelled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session, sessionmaker

from services.common.dispatch import dispatch
from services.common.models import TERMINAL_JOB_STATUSES, Job, Shard, ShardStatus, utcnow
from services.worker import leases
from services.worker.leases import as_utc

log = logging.getLogger("diffii.sweeper")

BATCH = 500


@dataclass
class SweepReport:
    requeued: list[str] = field(default_factory=list)
    failed_jobs: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    cancelled_jobs: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.requeued or self.failed_jobs or self.resent or self.cancelled_jobs)


def sweep(
    sessions: sessionmaker[Session], *, resend_after: float, now: datetime | None = None
) -> SweepReport:
    now = now or utcnow()
    report = SweepReport()
    with sessions() as session:
        _expired_leases(session, now, report)
        _lost_messages(session, now, timedelta(seconds=resend_after), report)
        _finish_cancels(session, now, report)
        if report.resent:
            dispatch(session, report.resent)
    if report:
        log.info(
            "sweep",
            extra={
                "requeued": report.requeued,
                "failed_jobs": report.failed_jobs,
                "resent": report.resent,
                "cancelled_jobs": report.cancelled_jobs,
            },
        )
    return report


def _expired_leases(session: Session, now: datetime, report: SweepReport) -> None:
    rows = session.execute(
        select(Shard, Job.status, Job.cancel_requested)
        .join(Job, Job.id == Shard.job_id)
        .where(Shard.status == ShardStatus.running, Shard.lease_expires_at < now)
        .limit(BATCH)
    ).all()
    session.commit()
    for shard, job_status, cancel_requested in rows:
        same = and_(
            Shard.id == shard.id,
            Shard.status == ShardStatus.running,
            Shard.attempts == shard.attempts,
            Shard.lease_expires_at < now,
        )
        seen = as_utc(shard.heartbeat_at)
        cause = (
            f"worker {shard.worker} lost (no heartbeat since {seen:%Y-%m-%d %H:%M:%S} UTC)"
            if seen
            else "worker lost"
        )
        leases.lock_job(session, shard.job_id)
        if job_status in TERMINAL_JOB_STATUSES or cancel_requested:
            leases.update_shards(
                session, same, status=ShardStatus.cancelled, finished_at=now, lease_expires_at=None
            )
        elif shard.attempts >= shard.max_attempts:
            if leases.update_shards(
                session, same, status=ShardStatus.failed, finished_at=now, lease_expires_at=None, error=cause
            ):
                message = leases.failure_message(shard.kind, shard.class_name, shard.attempts, cause)
                leases.fail_job(session, shard.job_id, message)
                report.failed_jobs.append(shard.job_id)
        elif leases.update_shards(
            session,
            same,
            status=ShardStatus.pending,
            worker=None,
            lease_expires_at=None,
            enqueued_at=now,
            error=cause,
        ):
            report.requeued.append(shard.id)
            report.resent.append(shard.id)
        session.commit()


def _lost_messages(session: Session, now: datetime, after: timedelta, report: SweepReport) -> None:
    ready_since = func.coalesce(Shard.enqueued_at, Shard.created_at)
    pending = session.scalars(
        select(Shard.id).where(Shard.status == ShardStatus.pending, ready_since < now - after).limit(BATCH)
    ).all()
    report.resent.extend(pending)

    queued = session.execute(
        select(Shard.id, Shard.kind, Shard.enqueued_at)
        .where(Shard.status == ShardStatus.queued, ready_since < now - after)
        .order_by(ready_since)
        .limit(BATCH)
    ).all()
    if queued:
        live = session.scalar(
            select(func.count())
            .select_from(Shard)
            .where(Shard.status == ShardStatus.running, Shard.lease_expires_at >= now)
        )
        # Per kind: the latest send time among shards already picked up in the recent past.
        horizon = now - max(after * 20, timedelta(hours=1))
        latest = dict(
            session.execute(
                select(Shard.kind, func.max(Shard.enqueued_at))
                .where(
                    Shard.started_at.is_not(None),
                    Shard.started_at > horizon,
                    Shard.status != ShardStatus.queued,
                )
                .group_by(Shard.kind)
            ).all()
        )
        for shard_id, kind, enqueued_at in queued:
            sent = as_utc(enqueued_at)
            overtaken = (
                latest.get(kind) is not None and sent is not None and as_utc(latest[kind]) > sent + after
            )
            if not live or overtaken:
                report.resent.append(shard_id)
    session.commit()


def _finish_cancels(session: Session, now: datetime, report: SweepReport) -> None:
    jobs = session.scalars(
        select(Job.id)
        .where(Job.cancel_requested.is_(True), Job.status.notin_(TERMINAL_JOB_STATUSES))
        .limit(BATCH)
    ).all()
    for job_id in jobs:
        live = session.scalar(
            select(func.count())
            .select_from(Shard)
            .where(Shard.job_id == job_id, Shard.status == ShardStatus.running, Shard.lease_expires_at >= now)
        )
        if live:
            continue  # its worker stops at the next batch and finishes the cancel itself
        leases.lock_job(session, job_id)
        if leases.finalize_cancel(session, job_id):
            report.cancelled_jobs.append(job_id)
        session.commit()
    session.commit()


__all__ = ["SweepReport", "sweep"]
