"""Removing what jobs and uploads leave in storage: one job or dataset on its owner's request, or
every ended job and unused dataset past the retention periods (`diffii admin gc`).

Objects go first, rows (or the marks on them) after: a storage failure leaves the job as it was,
so the operation can simply be repeated, and no row ever points at objects that are gone without
saying so. Only keys under the job's own prefix are removed, so nothing of another job is touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from services.common import keys
from services.common.lifecycle import jobs
from services.common.lifecycle.table import Actor
from services.common.models import Dataset, Job
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


class DatasetInUse(Exception):
    """A job that has not ended still reads the dataset."""

    def __init__(self, dataset_id: str, job_ids: list[str]) -> None:
        super().__init__(
            f"dataset {dataset_id} is used by job(s) that have not ended: {', '.join(job_ids)}; "
            "cancel them or wait for them to end"
        )
        self.job_ids = job_ids


def delete_dataset(session: Session, storage: Storage, dataset_id: str) -> bool:
    """Remove a dataset's objects, then its row (commits); False if it is gone already.

    The row is locked first, and job creation reads it under a share lock, so a job cannot start
    on a dataset that is being deleted. Ended jobs keep their rows with no dataset_id. A storage
    failure (StorageError) rolls back: the row stays and a retry finishes the removal.
    DatasetInUse while a job that has not ended uses it."""
    found = session.scalar(select(Dataset.id).where(Dataset.id == dataset_id).with_for_update())
    if found is None:
        session.rollback()
        return False
    users = session.scalars(
        select(Job.id).where(Job.dataset_id == dataset_id, Job.status.notin_(TERMINAL_JOB_STATUSES)).limit(5)
    ).all()
    if users:
        session.rollback()
        raise DatasetInUse(dataset_id, list(users))
    try:
        storage.delete_prefix(keys.dataset_prefix(dataset_id))
    except BaseException:
        session.rollback()
        raise
    session.execute(update(Job).where(Job.dataset_id == dataset_id).values(dataset_id=None))
    session.execute(Dataset.__table__.delete().where(Dataset.id == dataset_id))
    session.commit()
    return True


def unused_datasets(session: Session, before: datetime) -> list[str]:
    """Datasets uploaded before `before` whose jobs, if any, have all ended and started before it."""
    last_job = (
        select(Job.dataset_id, func.max(Job.created_at).label("at"))
        .where(Job.dataset_id.is_not(None))
        .group_by(Job.dataset_id)
        .subquery()
    )
    running = select(Job.dataset_id).where(
        Job.dataset_id.is_not(None), Job.status.notin_(TERMINAL_JOB_STATUSES)
    )
    return list(
        session.scalars(
            select(Dataset.id)
            .outerjoin(last_job, last_job.c.dataset_id == Dataset.id)
            .where(
                Dataset.created_at < before,
                (last_job.c.at.is_(None)) | (last_job.c.at < before),
                Dataset.id.notin_(running),
            )
            .limit(BATCH)
        ).all()
    )


@dataclass
class GcReport:
    pruned: list[str] = field(default_factory=list)  # intermediates removed, archive kept
    expired: list[str] = field(default_factory=list)  # everything removed
    datasets: list[str] = field(default_factory=list)  # unused datasets removed


def collect(
    sessions: sessionmaker[Session],
    storage: Storage,
    *,
    retention: timedelta,
    intermediate_retention: timedelta,
    dataset_retention: timedelta | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
) -> GcReport:
    """Apply both retention periods to every ended job; the job rows stay, marked, for the owner.
    With `dataset_retention`, remove datasets neither uploaded nor used by a job within it."""
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
        if dataset_retention is not None:
            report.datasets = _collect_datasets(session, storage, now - dataset_retention, dry_run)
    if report.pruned or report.expired or report.datasets:
        log.info(
            "gc",
            extra={
                "pruned": report.pruned,
                "expired": report.expired,
                "datasets": report.datasets,
                "dry_run": dry_run,
            },
        )
    return report


def _collect_datasets(session: Session, storage: Storage, before: datetime, dry_run: bool) -> list[str]:
    candidates = unused_datasets(session, before)
    session.commit()
    if dry_run:
        return candidates
    removed = []
    for dataset_id in candidates:
        try:
            if delete_dataset(session, storage, dataset_id):
                removed.append(dataset_id)
        except DatasetInUse:  # a job started on it since it was listed
            continue
    return removed


def _mark(session: Session, job_id: str, **values: object) -> None:
    # Not a status change: the job stays succeeded/failed/cancelled, with fewer objects.
    session.execute(update(Job).where(Job.id == job_id).values(**values))
    session.commit()
