"""Removing what jobs leave in storage: one job on its owner's request, or every ended job past the
retention periods (`diffii admin gc`).

Objects go first, rows (or the marks on them) after: a storage failure leaves the job as it was,
so the operation can simply be repeated, and no row ever points at objects that are gone without
saying so. Only keys under the job's own prefix are removed, so nothing of another job is touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from services.common import keys
from services.common.lifecycle import jobs
from services.common.lifecycle.table import Actor
from services.common.models import Job
from services.common.statuses import TERMINAL_JOB_STATUSES
from services.common.storage import Storage
from services.common.timeutil import utcnow

log = logging.getLogger("diffii.retention")
BATCH = 500


def intermediate_prefixes(job_id: str) -> list[str]:
    """Everything of a job but its archive (the archive is built from these, and only from these)."""
    return [
        keys.pools_prefix(job_id),
        keys.concepts_prefix(job_id),
        keys.checkpoint_prefix(job_id),
        keys.all_images_prefix(job_id),
    ]


def delete_job(session: Session, storage: Storage, job_id: str) -> bool:
    """Remove an ended job's objects, then its rows (commits). False if the job has not ended."""
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    session.commit()
    if status not in TERMINAL_JOB_STATUSES:
        return False
    storage.delete_prefix(keys.job_prefix(job_id))  # StorageError: the rows stay, a retry finishes it
    jobs.lock(session, job_id)
    deleted = jobs.delete_rows(session, job_id, Actor.api)
    session.commit()
    return deleted


@dataclass
class GcReport:
    pruned: list[str] = field(default_factory=list)  # intermediates removed, archive kept
    expired: list[str] = field(default_factory=list)  # everything removed


def collect(
    sessions: sessionmaker[Session],
    storage: Storage,
    *,
    retention: timedelta,
    intermediate_retention: timedelta,
    now: datetime | None = None,
    dry_run: bool = False,
) -> GcReport:
    """Apply both retention periods to every ended job; the job rows stay, marked, for the owner."""
    now = now or utcnow()
    report = GcReport()
    with sessions() as session:
        expiring = session.scalars(
            select(Job.id)
            .where(
                Job.status.in_(TERMINAL_JOB_STATUSES),
                Job.expired_at.is_(None),
                Job.finished_at < now - retention,
            )
            .limit(BATCH)
        ).all()
        pruning = session.scalars(
            select(Job.id)
            .where(
                Job.status.in_(TERMINAL_JOB_STATUSES),
                Job.pruned_at.is_(None),
                Job.expired_at.is_(None),
                Job.finished_at < now - intermediate_retention,
                Job.id.notin_(expiring),
            )
            .limit(BATCH)
        ).all()
        session.commit()
        for job_id in expiring:
            if not dry_run:
                storage.delete_prefix(keys.job_prefix(job_id))
                _mark(session, job_id, expired_at=now, pruned_at=now, archive_key=None)
            report.expired.append(job_id)
        for job_id in pruning:
            if not dry_run:
                for prefix in intermediate_prefixes(job_id):
                    storage.delete_prefix(prefix)
                _mark(session, job_id, pruned_at=now)
            report.pruned.append(job_id)
    if report.pruned or report.expired:
        log.info("gc", extra={"pruned": report.pruned, "expired": report.expired, "dry_run": dry_run})
    return report


def _mark(session: Session, job_id: str, **values: object) -> None:
    # Not a status change: the job stays succeeded/failed/cancelled, with fewer objects.
    session.execute(update(Job).where(Job.id == job_id).values(**values))
    session.commit()
