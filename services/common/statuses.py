"""A job's statuses, apart from the SQL models, so that the REST client (which needs no database)
reads the same definition of a finished job as the API and the workers."""

from __future__ import annotations

import enum


class JobStatus(enum.StrEnum):
    queued = "queued"
    preparing = "preparing"
    learning = "learning"
    generating = "generating"
    packaging = "packaging"
    cancelling = "cancelling"  # cancel asked while a shard ran; its worker stops at the next batch
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


# The statuses a job never leaves (only deletion removes it).
TERMINAL_JOB_STATUSES: tuple[JobStatus, ...] = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)
