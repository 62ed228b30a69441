"""Recovery sweep: nothing stays queued forever, no dead worker keeps a shard.

Runs periodically in every worker's main process (and can run standalone: `diffii sweeper`). Every
action is a lifecycle transition (a conditional update), so any number of sweepers may run at once.

1. A running shard whose lease expired (its worker died or hung) goes back to pending with a backoff,
   counting the attempt; out of attempts or retry budget, the job fails naming the class. A shard of a
   cancelling job is stopped; one of an ended job is closed.
2. A queued (admitted) shard is re-sent when its message looks lost: it waited `resend_after` and
   either no shard is running anywhere, or a same-kind shard sent well after it has already been
   picked up (the queue is FIFO, so it should have gone first).
3. A cancelling job with no live running shard (its worker died) becomes cancelled.
4. An admission pass: pending shards (a retry whose backoff is over, a shard whose pass was missed
   because its process died) are admitted into the slots that are free.

`release_dead_worker` is the fast path beside it: `diffii up`'s supervisor, which sees its worker
process exit, releases that worker's running shards at once instead of waiting out their lease.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from services.common.dispatch import dispatch, resend
from services.common.lifecycle import jobs, shards
from services.common.lifecycle.retry import RetryPolicy
from services.common.lifecycle.table import Actor
from services.common.models import Job, JobStatus, Shard, ShardKind, ShardStatus
from services.common.timeutil import as_utc, utcnow

log = logging.getLogger("diffii.sweeper")

BATCH = 500


@dataclass
class SweepReport:
    requeued: list[str] = field(default_factory=list)
    failed_jobs: list[str] = field(default_factory=list)
    resent: list[str] = field(default_factory=list)
    cancelled_jobs: list[str] = field(default_factory=list)
    admitted: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.requeued or self.failed_jobs or self.resent or self.cancelled_jobs or self.admitted)


def sweep(
    sessions: sessionmaker[Session],
    *,
    resend_after: float,
    policy: RetryPolicy | None = None,
    now: datetime | None = None,
) -> SweepReport:
    now = now or utcnow()
    report = SweepReport()
    with sessions() as session:
        _expired_leases(session, now, policy or RetryPolicy(), report)
        lost = _lost_messages(session, now, timedelta(seconds=resend_after))
        _finish_cancels(session, report)
        report.resent.extend(resend(session, lost))
        report.admitted.extend(dispatch(session))
    if report:
        log.info(
            "sweep",
            extra={
                "requeued": report.requeued,
                "failed_jobs": report.failed_jobs,
                "resent": report.resent,
                "cancelled_jobs": report.cancelled_jobs,
                "admitted": report.admitted,
            },
        )
    return report


def release_dead_worker(
    sessions: sessionmaker[Session], instance: str, cause: str, policy: RetryPolicy | None = None
) -> list[str]:
    """Release and re-send the running shards of a worker process that is known dead: every task
    process of it named itself `<host>:<pid>@<instance>` (services/worker/process.py). Returns the
    released shard ids."""
    if not instance:  # a worker not started by a supervisor has no instance: its lease covers it
        return []
    now = utcnow()
    released: list[str] = []
    with sessions() as session:
        rows = session.scalars(
            select(Shard).where(
                Shard.status == ShardStatus.running, Shard.worker.endswith(f"@{instance}", autoescape=True)
            )
        ).all()
        session.commit()
        for shard in rows:
            if shards.release(session, shard, cause, policy or RetryPolicy(), now):
                released.append(shard.id)
        if released:
            dispatch(session)  # an admission pass: the released shards go first in their owner's turn
    if released:
        log.info("released the shards of a dead worker", extra={"instance": instance, "released": released})
    return released


def _expired_leases(session: Session, now: datetime, policy: RetryPolicy, report: SweepReport) -> None:
    rows = session.execute(
        select(Shard, Job.status)
        .join(Job, Job.id == Shard.job_id)
        .where(Shard.status == ShardStatus.running, Shard.lease_expires_at < now)
        .limit(BATCH)
    ).all()
    session.commit()
    for shard, job_status in rows:
        outcome = shards.expire(session, shard, job_status, policy, now)
        if outcome == "requeued":
            report.requeued.append(shard.id)
        elif outcome == "failed":
            report.failed_jobs.append(shard.job_id)
        elif outcome == "stopped":
            report.cancelled_jobs.append(shard.job_id)


def _lost_messages(session: Session, now: datetime, after: timedelta) -> list[tuple[str, ShardKind, str]]:
    ready_since = func.coalesce(Shard.enqueued_at, Shard.created_at)
    lost: list[tuple[str, ShardKind, str]] = []
    queued = session.execute(
        select(Shard.id, Shard.kind, Shard.enqueued_at, Shard.job_id)
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
        for shard_id, kind, enqueued_at, job_id in queued:
            sent = as_utc(enqueued_at)
            overtaken = (
                latest.get(kind) is not None and sent is not None and as_utc(latest[kind]) > sent + after
            )
            if not live or overtaken:
                lost.append((shard_id, kind, job_id))
    session.commit()
    return lost


def _finish_cancels(session: Session, report: SweepReport) -> None:
    """A cancelling job whose running shards all went (their workers died and were expired above,
    or stopped without finishing the cancel) becomes cancelled."""
    candidates = session.scalars(select(Job.id).where(Job.status == JobStatus.cancelling).limit(BATCH)).all()
    session.commit()
    for job_id in candidates:
        jobs.lock(session, job_id)
        if jobs.finish_cancel(session, job_id, Actor.sweeper):
            report.cancelled_jobs.append(job_id)
        session.commit()


__all__ = ["SweepReport", "release_dead_worker", "sweep"]
