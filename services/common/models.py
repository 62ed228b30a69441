"""The service's state in SQL: owners and keys, datasets, jobs and shards.

Every unit of queued work is a `shards` row (kind prepare, learn, generate or package), so one
mechanism (lease, heartbeat, attempts, re-enqueue by the sweeper) keeps every stage from being lost.
The user-facing "shards" of a job are its `generate` rows.
"""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from services.common.statuses import JobStatus
from services.common.timeutil import utcnow

__all__ = ["JobStatus"]  # re-exported: the column's type (the statuses live apart from SQL)


def new_id() -> str:
    return uuid.uuid4().hex


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}  # noqa: RUF012 - SQLAlchemy reads it


class ShardKind(enum.StrEnum):
    prepare = "prepare"
    learn = "learn"
    generate = "generate"
    package = "package"


class ShardStatus(enum.StrEnum):
    waiting = "waiting"  # created by prepare; becomes pending when its stage is reached (no message yet)
    pending = "pending"  # row committed, message maybe not yet on the broker
    queued = "queued"  # message sent to the broker
    running = "running"  # a worker holds the lease
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


TZ = DateTime(timezone=True)


def one_of(column: str, values: type[enum.StrEnum], name: str) -> CheckConstraint:
    """The database refuses a status no code path may write (migration 0003)."""
    allowed = ", ".join(f"'{v.value}'" for v in values)
    return CheckConstraint(f"{column} IN ({allowed})", name=name)


class Owner(Base):
    __tablename__ = "owners"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(TZ, default=utcnow)
    # Fair share (migration 0004): when this owner last had a shard admitted to the broker; among
    # owners with as much work running, the one admitted least recently goes next.
    last_admitted_at: Mapped[datetime | None] = mapped_column(TZ, nullable=True)

    keys: Mapped[list[ApiKey]] = relationship(back_populates="owner")


class OwnerQuota(Base):
    """One owner's overrides of the quota settings (migration 0004); a null column keeps the default."""

    __tablename__ = "owner_quotas"

    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), primary_key=True)
    max_active_jobs: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_job_cost: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_stored_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(TZ, default=utcnow, onupdate=utcnow)


class WorkerPresence(Base):
    """A live worker and its task processes (migration 0004): every worker's main process writes its
    row each sweep tick; admission counts the slots of rows seen recently."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    slots: Mapped[int] = mapped_column(Integer)
    seen_at: Mapped[datetime] = mapped_column(TZ, default=utcnow)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the whole key
    created_at: Mapped[datetime] = mapped_column(TZ, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(TZ, nullable=True)

    owner: Mapped[Owner] = relationship(back_populates="keys")


class Dataset(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    object_key: Mapped[str] = mapped_column(String(1024))
    filename: Mapped[str] = mapped_column(String(1024))
    bytes: Mapped[int] = mapped_column(BigInteger)
    images: Mapped[int] = mapped_column(Integer)
    classes: Mapped[list[Any]] = mapped_column(JSON)  # [{"name": str, "images": int}]
    skipped: Mapped[list[Any]] = mapped_column(JSON, default=list)  # [{"path": str, "reason": str}]
    created_at: Mapped[datetime] = mapped_column(TZ, default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner_id", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_owner_created", "owner_id", "created_at", "id"),
        one_of("status", JobStatus, "ck_jobs_status"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    dataset_id: Mapped[str | None] = mapped_column(ForeignKey("datasets.id"), nullable=True)
    dataset_uri: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # sha256 of the creating request's body, so a retry with the same Idempotency-Key but a different
    # body is told apart (409) from a true retry, even when the server picked the seed.
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)  # JobParams.model_dump(mode="json")
    status: Mapped[JobStatus] = mapped_column(Enum(JobStatus, native_enum=False, length=16), index=True)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    manifest: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # classes, skipped
    model_revision: Mapped[str | None] = mapped_column(String(200), nullable=True)
    images_total: Mapped[int] = mapped_column(Integer, default=0)
    archive_key: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # Admission order within one owner (migration 0004): higher first, then older jobs first.
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Size of the finished archive, for the owner's stored-bytes quota (migration 0004).
    archive_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(TZ, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(TZ, default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(TZ, nullable=True)
    # Retention (migration 0003): when `diffii admin gc` removed the job's intermediate objects
    # (pools, concepts, loose images), and when it removed the rest, the archive included.
    pruned_at: Mapped[datetime | None] = mapped_column(TZ, nullable=True)
    expired_at: Mapped[datetime | None] = mapped_column(TZ, nullable=True)

    shards: Mapped[list[Shard]] = relationship(back_populates="job", order_by="Shard.seq")


class Shard(Base):
    __tablename__ = "shards"
    __table_args__ = (
        UniqueConstraint("job_id", "seq", name="uq_shards_job_seq"),
        Index("ix_shards_status_lease", "status", "lease_expires_at"),
        one_of("status", ShardStatus, "ck_shards_status"),
        one_of("kind", ShardKind, "ck_shards_kind"),
        CheckConstraint("attempts >= 0 AND attempts <= max_attempts", name="ck_shards_attempts"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)  # order within the job: prepare 0, learn 1, ...
    kind: Mapped[ShardKind] = mapped_column(Enum(ShardKind, native_enum=False, length=16))
    class_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    class_name: Mapped[str | None] = mapped_column(String(1024), nullable=True)
    start: Mapped[int] = mapped_column(Integer, default=0)  # image indices [start, stop) of the class
    stop: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[ShardStatus] = mapped_column(Enum(ShardStatus, native_enum=False, length=16), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    seed: Mapped[int] = mapped_column(BigInteger, default=0)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(TZ, nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(TZ, nullable=True)
    enqueued_at: Mapped[datetime | None] = mapped_column(TZ, nullable=True)
    # Retries (migration 0003): a pending shard is not sent before not_before (backoff), and is not
    # retried once first_started_at lies further back than the retry budget.
    not_before: Mapped[datetime | None] = mapped_column(TZ, nullable=True)
    first_started_at: Mapped[datetime | None] = mapped_column(TZ, nullable=True)
    images_done: Mapped[int] = mapped_column(Integer, default=0)
    images_total: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Worker figures for /metrics, stored as seconds so SQL sums them the same on SQLite and Postgres
    # (migration 0002): queue wait of the last claim, run time of the last successful attempt.
    queue_wait_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    run_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(TZ, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(TZ, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(TZ, nullable=True, index=True)

    job: Mapped[Job] = relationship(back_populates="shards")
