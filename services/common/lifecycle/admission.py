"""Admission: which pending shards may go to the broker now, so that owners share the workers.

Celery has no fairness of its own: a message on the broker is run in the order it was sent. So no
shard is sent when it becomes ready; it is `pending` until an admission pass gives it a slot
(pending -> queued, event "admit"), and only then is its message sent. The pass runs whenever a
shard ends (in the worker that ran it), a job is submitted or cancelled (in the API) and the sweeper
ticks, always under one database lock, so passes never race each other for the same free slots.

Capacity: at most `slots x in_flight_per_slot` shards are queued or running at once, over every
owner and kind. Free slots go one at a time to the owner who has used the workers least: worker
seconds its shards ran within the last `window` seconds, plus each shard it has in flight at the
window's mean shard time (Slurm's fair-share factor, without the decay curve). So an owner who has
just arrived goes before one whose flood has kept every worker busy, until it has used as much; with
`window` 0 only the shards in flight count. Among owners with as much, the one admitted least
recently (`owners.last_admitted_at`) goes first; within an owner the job of the highest `priority`,
then the oldest job, then the shard's order in its job.

Look-ahead: a job's generate shards can start only after its prepare shard (and its learn shard, for
a method that learns) has run, so meanwhile its owner has nothing to admit, and the slots that free go
to whoever has work queued: a newcomer behind a flood would start its first generate wave on the one
slot its last short stage frees and wait a whole shard for the rest. So while an owner's shard of a
short stage is admissible or in flight (`between_stages`: prepare, or learning with no optimiser
step), a pass keeps up to its fair share of slots (capacity over the owners with work, less what
it has in flight) free for it from owners who have used the workers more. Those stages only read
and check the dataset, so the slots idle for seconds, not a shard's length; a learn slice that
optimises, which runs up to a whole slice, holds none.

Shards of a job that is cancelling or has ended are never admitted (cancel closes its pending and
queued rows; a message already sent is dropped by the worker that claims it).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.orm import Session

from services.common.lifecycle.moves import move_where
from services.common.lifecycle.table import IN_FLIGHT_SHARD, OPEN_JOB, Actor
from services.common.models import Job, Owner, Shard, ShardKind, ShardStatus, WorkerPresence
from services.common.timeutil import as_utc, utcnow

# pg_advisory_xact_lock key of the admission pass ("diffii" in ASCII, as a bigint).
ADMISSION_LOCK = 0x646966666969
NEVER = datetime.min.replace(tzinfo=utcnow().tzinfo)


@dataclass(frozen=True)
class Admitted:
    shard_id: str
    kind: ShardKind
    job_id: str
    owner_id: str


def lock(session: Session) -> None:
    """Serialise admission passes until commit. SQLite's BEGIN IMMEDIATE already serialises writers."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADMISSION_LOCK})


def live_slots(session: Session, now: datetime, seen_within: float, fallback: int) -> int:
    """Task processes of the workers that reported within `seen_within` seconds; `fallback` when
    none did (no worker started yet, or presence turned off): a job submitted first is not stuck."""
    slots = session.scalar(
        select(func.sum(WorkerPresence.slots)).where(
            WorkerPresence.seen_at >= now - timedelta(seconds=seen_within)
        )
    )
    return int(slots) if slots else fallback


def in_flight_by_owner(session: Session) -> dict[str, int]:
    rows = session.execute(
        select(Job.owner_id, func.count())
        .select_from(Shard)
        .join(Job, Job.id == Shard.job_id)
        .where(Shard.status.in_(IN_FLIGHT_SHARD))
        .group_by(Job.owner_id)
    ).all()
    return {owner: int(count) for owner, count in rows}


def recent_usage(
    session: Session, owners: list[str], now: datetime, window: float
) -> tuple[dict[str, float], float]:
    """({owner: worker seconds its shards ran within the last `window` seconds}, the mean run time of
    the shards that ended in it: what a shard in flight is expected to cost; 1 s with none)."""
    if window <= 0:
        return {}, 1.0
    since = now - timedelta(seconds=window)
    rows = session.execute(
        select(Job.owner_id, Shard.started_at, Shard.finished_at, Shard.status)
        .join(Job, Job.id == Shard.job_id)
        .where(
            Job.owner_id.in_(owners),
            Shard.started_at.is_not(None),
            or_(Shard.finished_at.is_(None), Shard.finished_at >= since),
        )
    ).all()
    used: dict[str, float] = {}
    ended: list[float] = []
    for owner, started, finished, status in rows:
        start, end = as_utc(started), as_utc(finished)
        if end is None and status != ShardStatus.running:
            continue  # released or waiting again: it holds no worker now
        assert start is not None
        if end is not None:
            ended.append(max(0.0, (end - start).total_seconds()))
        seconds = ((end or now) - max(start, since)).total_seconds()
        used[owner] = used.get(owner, 0.0) + max(0.0, seconds)
    return used, (sum(ended) / len(ended) if ended else 1.0)


def between_stages(session: Session, now: datetime) -> set[str]:
    """Owners with a short stage's shard admissible or in flight in an open job (prepare, or a learn
    shard with no optimiser step to run): their job's generate shards may start within seconds."""
    short = or_(
        Shard.kind == ShardKind.prepare,
        and_(Shard.kind == ShardKind.learn, func.coalesce(Shard.stop, 0) <= func.coalesce(Shard.start, 0)),
    )
    ready = or_(Shard.status.in_(IN_FLIGHT_SHARD), and_(*_admissible(now)))  # not a retry's backoff
    return set(
        session.scalars(
            select(Job.owner_id).distinct().select_from(Shard).join(Job, Job.id == Shard.job_id)
            .where(short, ready, Job.status.in_(OPEN_JOB))
        )
    )  # fmt: skip


def _admissible(now: datetime) -> tuple[object, ...]:
    return (
        Shard.status == ShardStatus.pending,
        or_(Shard.not_before.is_(None), Shard.not_before <= now),  # a retry's backoff is over
        Job.status.in_(OPEN_JOB),
    )


def _candidates(session: Session, owner_id: str, now: datetime, limit: int) -> list[Admitted]:
    """The owner's next admissible shards in admission order. Rows another transaction holds (a
    cancel closing them) are skipped, not waited for: the two then cannot deadlock."""
    rows = session.execute(
        select(Shard.id, Shard.kind, Shard.job_id)
        .join(Job, Job.id == Shard.job_id)
        .where(Job.owner_id == owner_id, *_admissible(now))
        .order_by(Job.priority.desc(), Job.created_at, Job.id, Shard.seq)
        .limit(limit)
        .with_for_update(of=Shard, skip_locked=True)
    ).all()
    return [Admitted(shard_id, ShardKind(kind), job_id, owner_id) for shard_id, kind, job_id in rows]


def admit(
    session: Session, capacity: int, now: datetime | None = None, window: float = 0.0
) -> list[Admitted]:
    """One admission pass (commits): pending -> queued for as many shards as `capacity` (the most
    shards in flight at once) leaves room for, in fair-share order over the last `window` seconds'
    use. Send the returned shards' messages after this returns; give back (`give_back`) the ones the
    broker refused."""
    now = now or utcnow()
    lock(session)
    running = in_flight_by_owner(session)
    free = capacity - sum(running.values())
    if free <= 0:
        session.commit()
        return []
    owners = list(
        session.scalars(
            select(Job.owner_id).distinct().select_from(Shard).join(Job, Job.id == Shard.job_id)
            .where(*_admissible(now))
        )
    )  # fmt: skip
    if not owners:
        session.commit()
        return []
    last = dict(session.execute(select(Owner.id, Owner.last_admitted_at).where(Owner.id.in_(owners))).all())
    queues = {owner: _candidates(session, owner, now, free) for owner in owners}
    preparing = between_stages(session, now)
    used, quantum = recent_usage(session, list({*owners, *preparing}), now, window)

    def charge(owner: str) -> float:
        return used.get(owner, 0.0) + quantum * running.get(owner, 0)

    share = math.ceil(capacity / len({*owners, *preparing, *running}))
    admitted: dict[str, int] = {}

    def kept_for_others(owner: str, charged: float) -> int:
        """Slots kept free from `owner` for preparing owners who have used the workers less."""
        return sum(
            max(0, share - running.get(p, 0) - admitted.get(p, 0))
            for p in preparing
            if p != owner and charge(p) < charged
        )

    heap = [(charge(owner), as_utc(last.get(owner)) or NEVER, owner) for owner in owners if queues[owner]]
    heapq.heapify(heap)
    chosen: list[Admitted] = []
    stamp: dict[str, datetime] = {}
    while heap and len(chosen) < free:
        charged, _, owner = heapq.heappop(heap)
        if len(chosen) + kept_for_others(owner, charged) >= free:
            break
        chosen.append(queues[owner].pop(0))
        admitted[owner] = admitted.get(owner, 0) + 1
        # Microseconds apart, so the order of this pass's admissions is the order they were made.
        stamp[owner] = now + timedelta(microseconds=len(chosen))
        if queues[owner]:
            heapq.heappush(heap, (charged + quantum, stamp[owner], owner))
    if chosen:
        move_where(
            session, (Shard.id.in_([a.shard_id for a in chosen]),), "admit", Actor.dispatch, enqueued_at=now
        )
        for owner, at in stamp.items():
            session.execute(
                update(Owner).where(Owner.id == owner).values(last_admitted_at=at)
                .execution_options(synchronize_session=False)
            )  # fmt: skip
    session.commit()
    return chosen


def give_back(session: Session, shard_ids: list[str]) -> int:
    """queued -> pending for admitted shards whose message the broker refused (commits): the slot is
    free for the next pass, and the shard is admitted again in its turn."""
    moved = move_where(session, (Shard.id.in_(shard_ids),), "unsent", Actor.dispatch) if shard_ids else 0
    session.commit()
    return moved


def mark_resent(session: Session, shard_ids: list[str]) -> int:
    """A queued shard whose message looked lost was sent again (commits)."""
    moved = move_where(session, (Shard.id.in_(shard_ids),), "sent", Actor.dispatch, enqueued_at=utcnow())
    session.commit()
    return moved
