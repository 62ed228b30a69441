"""Per-owner quotas: defaults in settings, overrides per owner (`owner_quotas`, `diffii admin quota`).

- max_active_jobs: jobs queued or running (not ended) at once; over it, 429 with Retry-After.
- max_job_cost: the work one job may ask for (diffii_core.planning.job_cost); over it, 422.
- max_stored_bytes: bytes of the owner's uploaded datasets and kept archives; an upload that would
  pass it is 413, a job submitted while the owner is at or over it is 422.

A refusal raises QuotaExceeded, which says which limit, its value and the request's.

Each check runs in the transaction of the write it guards, after `lock_owner`: the owner's row
locked (Postgres `SELECT ... FOR UPDATE`; SQLite's BEGIN IMMEDIATE, services/common/db.py, already
makes every transaction the only writer). Two racing requests of one owner run one after the other,
so the second counts what the first wrote: no pair can both take the last slot or the last bytes.
Where several limits are over at once, the request's own (422, 413) are named before the owner's
active-jobs count (429): retrying after Retry-After could never make an invalid request valid.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.common.models import Dataset, Job, Owner, OwnerQuota
from services.common.statuses import TERMINAL_JOB_STATUSES


@dataclass(frozen=True)
class Limits:
    max_active_jobs: int
    max_job_cost: float
    max_stored_bytes: int


QUOTA_FIELDS = tuple(f.name for f in fields(Limits))


class QuotaExceeded(Exception):
    """A request over one of the owner's limits; `status` is the HTTP answer (429, 422 or 413)."""

    def __init__(
        self, limit: str, value: float, requested: float, status: int, retry_after: int | None = None
    ) -> None:
        self.limit, self.value, self.requested = limit, value, requested
        self.status, self.retry_after = status, retry_after
        super().__init__(
            f"over the {limit} quota: this request needs {_num(requested)}, the limit is {_num(value)}"
        )


def _num(x: float) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def limits(session: Session, owner_id: str, defaults: Limits) -> Limits:
    """The owner's limits: each override that is set, else the setting."""
    row = session.get(OwnerQuota, owner_id)
    if row is None:
        return defaults
    return Limits(**{name: _pick(getattr(row, name), getattr(defaults, name)) for name in QUOTA_FIELDS})


def _pick(override: float | None, default: float) -> float:
    return default if override is None else override


def set_overrides(session: Session, owner_id: str, **values: float | None) -> OwnerQuota:
    """Set the given overrides (None clears one back to the default); commits."""
    unknown = set(values) - set(QUOTA_FIELDS)
    if unknown:
        raise ValueError(f"unknown quota {sorted(unknown)}; known: {', '.join(QUOTA_FIELDS)}")
    row = session.get(OwnerQuota, owner_id) or OwnerQuota(owner_id=owner_id)
    for name, value in values.items():
        setattr(row, name, value)
    session.add(row)
    session.commit()
    return row


def active_jobs(session: Session, owner_id: str) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.owner_id == owner_id, Job.status.not_in(TERMINAL_JOB_STATUSES))
        )
        or 0
    )


def stored_bytes(session: Session, owner_id: str) -> int:
    datasets = session.scalar(select(func.sum(Dataset.bytes)).where(Dataset.owner_id == owner_id)) or 0
    archives = (
        session.scalar(
            select(func.sum(Job.archive_bytes)).where(Job.owner_id == owner_id, Job.archive_key.is_not(None))
        )
        or 0
    )
    return int(datasets) + int(archives)


def lock_owner(session: Session, owner_id: str) -> None:
    """Hold the owner's row until the transaction ends: its quota checks and writes are serial."""
    session.execute(select(Owner.id).where(Owner.id == owner_id).with_for_update())


def check_job(session: Session, owner_id: str, cost: float, limit: Limits, retry_after: int) -> None:
    """A new job: its cost, the owner's storage, one more active job. Takes the owner's lock until
    the caller commits (the job's insert), so two racing submissions cannot both take the last slot."""
    lock_owner(session, owner_id)
    if cost > limit.max_job_cost:
        raise QuotaExceeded("max_job_cost", limit.max_job_cost, round(cost, 1), 422)
    stored = stored_bytes(session, owner_id)
    if stored >= limit.max_stored_bytes:
        raise QuotaExceeded("max_stored_bytes", limit.max_stored_bytes, stored, 422)
    active = active_jobs(session, owner_id)
    if active + 1 > limit.max_active_jobs:
        raise QuotaExceeded("max_active_jobs", limit.max_active_jobs, active + 1, 429, retry_after)


def check_upload(session: Session, owner_id: str, size: int, limit: Limits) -> None:
    """An upload of `size` bytes on top of what the owner stores. Takes the owner's lock until the
    caller commits: check the final size in the transaction that inserts the dataset."""
    lock_owner(session, owner_id)
    total = stored_bytes(session, owner_id) + size
    if total > limit.max_stored_bytes:
        raise QuotaExceeded("max_stored_bytes", limit.max_stored_bytes, total, 413)
