"""Shard transitions: claim, heartbeat, finish, retry, stop, and the sweeper's recovery.

Every change is an UPDATE whose WHERE clause names the state it expects (status from the table, and
worker and attempt for a running shard). Exactly one of several racing workers, sweepers or duplicate
broker deliveries gets rowcount 1; the others see 0 and back off. The attempt number doubles as a
fencing token: a worker whose lease was taken over can no longer write anything for that shard.
Callers own the transaction.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from services.common.lifecycle import jobs
from services.common.lifecycle.moves import move_where
from services.common.lifecycle.retry import Failure, RetryPolicy, classify
from services.common.lifecycle.table import SENDABLE_SHARD, SHARD_TRANSITIONS, Actor, lookup
from services.common.models import Job, JobStatus, Shard, ShardKind, ShardStatus
from services.common.statuses import TERMINAL_JOB_STATUSES
from services.common.timeutil import as_utc, utcnow

MAX_ERROR_CHARS = 2000
STOPPING = (*TERMINAL_JOB_STATUSES, JobStatus.cancelling)
CLAIMABLE = lookup(SHARD_TRANSITIONS, "claim", Actor.worker)[0]


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
    first_started_at: datetime


class Signal(enum.StrEnum):
    ok = "ok"
    lost = "lost"  # the shard is no longer ours
    stop = "stop"  # the job is cancelling or has ended


def new_shard(actor: Actor, **values: Any) -> Shard:
    """A shard row in the state the table gives a row this actor creates."""
    _, status = lookup(SHARD_TRANSITIONS, "create", actor)
    return Shard(status=status, **values)


def owned(c: Claim) -> tuple[ColumnElement[bool], ...]:
    """Holds only while this claim is still the shard's current attempt."""
    return (Shard.id == c.shard_id, Shard.worker == c.worker, Shard.attempts == c.attempt)


# -- dispatch and readiness --------------------------------------------------------------------------


def make_ready(session: Session, job_id: str, kinds: tuple[ShardKind, ...]) -> list[str]:
    """waiting -> pending for the job's shards of these kinds (admission sends them); returns their ids."""
    ids = list(
        session.scalars(
            select(Shard.id).where(
                Shard.job_id == job_id, Shard.kind.in_(kinds), Shard.status == ShardStatus.waiting
            )
        )
    )
    if ids:
        move_where(session, (Shard.id.in_(ids),), "ready", Actor.worker, enqueued_at=utcnow())
    return ids


# -- a worker's attempt ------------------------------------------------------------------------------


def claim(session: Session, shard_id: str, worker: str, lease_seconds: float) -> Claim | str:
    """Take the shard for this worker (commits); returns the Claim, or why not."""
    row = session.execute(
        select(Shard, Job.status).join(Job, Job.id == Shard.job_id).where(Shard.id == shard_id)
    ).one_or_none()
    if row is None:
        session.commit()
        return "unknown shard"
    shard, job_status = row
    if job_status in STOPPING:
        # A message that outlived its job: close the row so nothing waits for it.
        jobs.lock(session, shard.job_id)
        move_where(session, (Shard.id == shard_id,), "close", Actor.worker)
        if job_status == JobStatus.cancelling:
            jobs.finish_cancel(session, shard.job_id, Actor.worker)
        session.commit()
        return f"job is {job_status}"
    if shard.status not in CLAIMABLE:
        session.commit()
        # A duplicate delivery (someone else has or had it), or a message of a shard that went back to
        # pending (a retry): it runs when admission sends it again, not before.
        return f"shard is {shard.status}"
    now = utcnow()
    ready = as_utc(shard.enqueued_at)
    won = move_where(
        session,
        (Shard.id == shard_id, Shard.attempts == shard.attempts, Shard.attempts < Shard.max_attempts),
        "claim",
        Actor.worker,
        attempts=shard.attempts + 1,
        worker=worker,
        started_at=now,
        first_started_at=func.coalesce(Shard.first_started_at, now),
        heartbeat_at=now,
        lease_expires_at=now + timedelta(seconds=lease_seconds),
        not_before=None,
        finished_at=None,
        queue_wait_s=(now - ready).total_seconds() if ready else None,
    )
    if not won:
        session.commit()
        return "claimed by another worker"
    if shard.kind == ShardKind.prepare:
        jobs.move(session, shard.job_id, "start", Actor.worker)
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
        first_started_at=as_utc(shard.first_started_at) or now,
    )


def _resume(session: Session, c: Claim, lease_seconds: float) -> bool:
    """Take back our own attempt after the sweeper expired it while we were alive but starved of
    CPU (a heartbeat thread can miss its lease on a loaded machine). Only while nobody has claimed
    the shard since: its attempt number and worker are still ours. The re-sent message then finds
    the shard running and is dropped, so a slow heartbeat costs neither an attempt nor the work."""
    now = utcnow()
    return bool(
        move_where(
            session, owned(c), "resume", Actor.worker,
            heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds), not_before=None,
        )
    )  # fmt: skip


def heartbeat(session: Session, c: Claim, lease_seconds: float, images_done: int | None = None) -> Signal:
    """Extend the lease (and record progress); commits; tells the caller whether to keep going."""
    now = utcnow()
    values: dict[str, Any] = {"heartbeat_at": now, "lease_expires_at": now + timedelta(seconds=lease_seconds)}
    if images_done is not None:
        values["images_done"] = images_done
    alive = move_where(session, owned(c), "heartbeat", Actor.worker, **values)
    if not alive and _resume(session, c, lease_seconds):
        alive = move_where(session, owned(c), "heartbeat", Actor.worker, **values)
    job_status = session.scalar(select(Job.status).where(Job.id == c.job_id))
    session.commit()
    if not alive:
        return Signal.lost
    if job_status is None or job_status in STOPPING:
        return Signal.stop
    return Signal.ok


def check(session: Session, c: Claim) -> Signal:
    """Read-only variant of heartbeat, for should_stop polls between batches."""
    row = session.execute(
        select(Shard.status, Shard.worker, Shard.attempts, Job.status)
        .join(Job, Job.id == Shard.job_id)
        .where(Shard.id == c.shard_id)
    ).one_or_none()
    session.commit()
    if row is None:
        return Signal.lost
    status, worker, attempts, job_status = row
    # Pending or queued with our attempt: expired while we were starved; the heartbeat resumes it.
    ours = worker == c.worker and attempts == c.attempt
    if not ours or status not in (ShardStatus.running, *SENDABLE_SHARD):
        return Signal.lost
    if job_status in STOPPING:
        return Signal.stop
    return Signal.ok


def succeed(session: Session, c: Claim, run_seconds: float, **values: Any) -> None:
    """Mark the shard done inside the caller's transaction; LeaseLost if it is no longer ours.
    The last failed attempt's error stays, so the status tells a retried shard from a clean one."""
    values = {"finished_at": utcnow(), "lease_expires_at": None, "run_s": run_seconds, **values}
    done = move_where(session, owned(c), "succeed", Actor.worker, **values)
    if not done and _resume(session, c, lease_seconds=60.0):
        done = move_where(session, owned(c), "succeed", Actor.worker, **values)
    if not done:
        raise LeaseLost(c.shard_id)


def stop(session: Session, c: Claim) -> bool:
    """The worker stopped its shard for a cancel (commits). The last one to stop ends the cancel."""
    jobs.lock(session, c.job_id)
    stopped = move_where(session, owned(c), "stop", Actor.worker, finished_at=utcnow(), lease_expires_at=None)
    jobs.finish_cancel(session, c.job_id, Actor.worker)
    session.commit()
    return bool(stopped)


def finish_generate(session: Session, c: Claim, run_seconds: float) -> list[str]:
    """Mark a generate shard done and, if it was the job's last one, make packaging ready.

    Fan-in decided by the database: with the job row locked, the finisher that sees no other open
    generate shard is the last one, and it alone moves the job to packaging. Returns the package
    shard id to dispatch after commit (or nothing).
    """
    jobs.lock(session, c.job_id)
    succeed(session, c, run_seconds, images_done=c.stop - c.start)
    if unfinished(session, c.job_id, ShardKind.generate) == 0 and jobs.move(
        session, c.job_id, "generated", Actor.worker
    ):
        return make_ready(session, c.job_id, (ShardKind.package,))
    return []


def next_slice(session: Session, c: Claim, reached: int, run_seconds: float) -> list[str] | None:
    """A learn slice that ended at step `reached`, short of the last (its checkpoint stored): marked
    done, fenced by the claim, and the next slice, steps [reached, stop), created pending in the same
    transaction, so the admission pass may give the worker to another owner before it runs. The job
    stays `learning`. Returns the new shard's id; None, writing nothing, if the job is no longer
    learning (cancelled or ended meanwhile)."""
    jobs.lock(session, c.job_id)
    if session.scalar(select(Job.status).where(Job.id == c.job_id)) != JobStatus.learning:
        return None
    succeed(session, c, run_seconds, images_done=reached - c.start)
    row = session.get(Shard, c.shard_id)
    assert row is not None
    last = session.scalar(select(func.max(Shard.seq)).where(Shard.job_id == c.job_id)) or 0
    session.add(
        new_shard(
            Actor.worker, job_id=c.job_id, seq=last + 1, kind=ShardKind.learn, start=reached, stop=c.stop,
            max_attempts=c.max_attempts, seed=row.seed,
        )
    )  # fmt: skip
    session.flush()
    return make_ready(session, c.job_id, (ShardKind.learn,))


def unfinished(session: Session, job_id: str, kind: ShardKind) -> int:
    return (
        session.scalar(
            select(func.count())
            .select_from(Shard)
            .where(Shard.job_id == job_id, Shard.kind == kind, Shard.status != ShardStatus.succeeded)
        )
        or 0
    )


# -- failures and retries ----------------------------------------------------------------------------


def error_text(exc: BaseException) -> str:
    from diffii_core.errors import DiffiiError

    text = str(exc) if isinstance(exc, DiffiiError) and str(exc) else f"{type(exc).__name__}: {exc}"
    return text[:MAX_ERROR_CHARS]


def _what(kind: ShardKind | str, class_name: str | None) -> str:
    return {
        ShardKind.prepare: "preparing the dataset",
        ShardKind.learn: "concept learning",
        ShardKind.generate: f"class {class_name!r}",
        ShardKind.package: "packaging the archive",
    }.get(ShardKind(kind), str(kind))


def failure_message(kind: ShardKind | str, class_name: str | None, attempts: int, cause: str) -> str:
    """What the user reads on a failed job: which part failed, how often, and why."""
    tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
    return f"{_what(kind, class_name)} failed after {tries}: {cause}"


def fail_attempt(
    session: Session, c: Claim, exc: BaseException, policy: RetryPolicy, *, now: datetime | None = None
) -> str:
    """Record a failed attempt (commits): "retry" (pending again after a backoff), "failed" (the job
    failed), or "lost" (the shard was no longer ours)."""
    now = now or utcnow()
    cause = error_text(exc)
    failure = classify(exc)
    policy = RetryPolicy(**{**policy.__dict__, "max_attempts": c.max_attempts})
    jobs.lock(session, c.job_id)
    at = policy.next_try(failure, c.attempt, c.first_started_at, now)
    if at is not None:
        retried = move_where(
            session,
            owned(c),
            "retry",
            Actor.worker,
            worker=None,
            lease_expires_at=None,
            enqueued_at=now,
            not_before=at,
            error=cause,
        )
        session.commit()
        return "retry" if retried else "lost"
    if not move_where(
        session, owned(c), "fail", Actor.worker, finished_at=now, lease_expires_at=None, error=cause
    ):
        session.commit()
        return "lost"
    if failure is Failure.deterministic:
        message = f"{_what(c.kind, c.class_name)} failed ({type(exc).__name__}, not retried): {cause}"
    else:
        message = failure_message(c.kind, c.class_name, c.attempt, cause)
        if c.attempt < c.max_attempts:
            message += f" (retry budget of {policy.budget_seconds:g} s spent)"
    jobs.fail(session, c.job_id, message, Actor.worker)
    session.commit()
    return "failed"


# -- the sweeper ---------------------------------------------------------------------------------------


def expire(session: Session, shard: Shard, job_status: JobStatus, policy: RetryPolicy, now: datetime) -> str:
    """A running shard whose lease ran out (its worker died or hung); commits. Returns what happened:
    "requeued", "failed" (the job), "stopped" (its job is cancelling), "closed" or "" (raced)."""
    same = (
        Shard.id == shard.id,
        Shard.attempts == shard.attempts,
        Shard.lease_expires_at < now,
    )
    seen = as_utc(shard.heartbeat_at)
    cause = (
        f"worker {shard.worker} lost (no heartbeat since {seen:%Y-%m-%d %H:%M:%S} UTC)"
        if seen
        else "worker lost"
    )
    jobs.lock(session, shard.job_id)
    outcome = ""
    if job_status == JobStatus.cancelling:
        if move_where(session, same, "stop", Actor.sweeper, finished_at=now, lease_expires_at=None):
            jobs.finish_cancel(session, shard.job_id, Actor.sweeper)
            outcome = "stopped"
    elif job_status in TERMINAL_JOB_STATUSES:
        if move_where(session, same, "close", Actor.sweeper, finished_at=now, lease_expires_at=None):
            outcome = "closed"
    else:
        policy = RetryPolicy(**{**policy.__dict__, "max_attempts": shard.max_attempts})
        at = policy.next_try(Failure.transient, shard.attempts, as_utc(shard.first_started_at), now)
        if at is not None:
            # The worker stays named: if it was only starved, not dead, it may resume (see _resume).
            if move_where(
                session, same, "expire", Actor.sweeper,
                lease_expires_at=None, enqueued_at=now, not_before=at, error=cause,
            ):  # fmt: skip
                outcome = "requeued"
        elif move_where(
            session, same, "fail", Actor.sweeper, finished_at=now, lease_expires_at=None, error=cause
        ):
            message = failure_message(shard.kind, shard.class_name, shard.attempts, cause)
            jobs.fail(session, shard.job_id, message, Actor.sweeper)
            outcome = "failed"
    session.commit()
    return outcome


def release(session: Session, shard: Shard, cause: str, policy: RetryPolicy, now: datetime) -> bool:
    """A running shard whose worker process is known dead (`diffii up`'s supervisor saw it exit):
    pending again at once, without waiting for its lease; commits. Fenced on the worker and attempt
    the caller read, and the worker is cleared so that process could never resume or finish it.
    Only while the shard has attempts and retry budget left and its job is open: anything else (out
    of retries, a cancelling job) is left to the sweeper's lease expiry, which knows those cases."""
    policy = RetryPolicy(**{**policy.__dict__, "max_attempts": shard.max_attempts})
    if policy.next_try(Failure.transient, shard.attempts, as_utc(shard.first_started_at), now) is None:
        return False
    jobs.lock(session, shard.job_id)
    open_job = select(Job.id).where(Job.id == shard.job_id, Job.status.not_in(STOPPING)).exists()
    fenced = (Shard.id == shard.id, Shard.worker == shard.worker, Shard.attempts == shard.attempts, open_job)
    moved = move_where(
        session, fenced, "release", Actor.supervisor,
        worker=None, lease_expires_at=None, enqueued_at=now, not_before=now, error=cause[:MAX_ERROR_CHARS],
    )  # fmt: skip
    session.commit()
    return bool(moved)
