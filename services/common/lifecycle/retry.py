"""Which failures are retried, and when: exponential backoff with jitter, bounded by count and time.

A blip of storage, database or broker heals in seconds to minutes; retrying at once would burn every
attempt inside the blip. A deterministic failure (the dataset is unusable, the model cannot load)
fails the same way every time, so it fails the job at once.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass
from datetime import datetime, timedelta


class Failure(enum.StrEnum):
    transient = "transient"  # infrastructure: retry after a backoff
    deterministic = "deterministic"  # the input or the model: never retry
    unknown = "unknown"  # anything else (a bug, a crash): retried like a transient one, by count


def classify(exc: BaseException) -> Failure:
    from diffii_core.errors import DatasetError, ModelError

    if isinstance(exc, DatasetError | ModelError):
        return Failure.deterministic
    if _is_infrastructure(exc):
        return Failure.transient
    return Failure.unknown


def _is_infrastructure(exc: BaseException) -> bool:
    """Connection-level errors of the database, the broker and the object store."""
    from sqlalchemy.exc import DBAPIError, OperationalError

    from services.common.storage import ObjectNotFound, StorageError

    if isinstance(exc, ObjectNotFound):
        return False  # a missing object stays missing
    if isinstance(exc, StorageError | ConnectionError | TimeoutError | OperationalError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    module = type(exc).__module__.split(".", 1)[0]
    # botocore's endpoint errors, redis's and kombu's connection errors: named by module, so this
    # file does not import them (the API process has no boto3 session to build, say).
    return module in {"botocore", "urllib3", "redis", "kombu", "amqp"} and "Error" in type(exc).__name__


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 3
    base_seconds: float = 5.0  # the wait after the first failed attempt
    factor: float = 2.0
    max_seconds: float = 300.0
    budget_seconds: float = 3600.0  # no new attempt once the first began this long ago
    jitter: float = 0.5  # the wait is drawn from [w (1 - jitter), w]: racing shards spread out

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt `attempt + 1`, after attempt `attempt` failed."""
        wait = min(self.max_seconds, self.base_seconds * self.factor ** max(0, attempt - 1))
        low = wait * (1 - self.jitter)
        return (rng or random).uniform(low, wait)

    def next_try(
        self,
        failure: Failure,
        attempt: int,
        first_started_at: datetime | None,
        now: datetime,
        rng: random.Random | None = None,
    ) -> datetime | None:
        """When to try again, or None when the shard must fail now."""
        if failure is Failure.deterministic or attempt >= self.max_attempts:
            return None
        at = now + timedelta(seconds=self.delay(attempt, rng))
        if first_started_at is not None and at - first_started_at > timedelta(seconds=self.budget_seconds):
            return None
        return at
