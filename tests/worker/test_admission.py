"""Admission: only admitted shards reach the broker, in fair-share order, never a cancelled job's.

On Postgres and SQLite, with the messages read back from a real Redis queue."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import select, update

from services.common import dispatch
from services.common.lifecycle import admission, jobs
from services.common.models import (
    JobStatus,
    Owner,
    Shard,
    ShardKind,
    ShardStatus,
    WorkerPresence,
    utcnow,
)
from services.common.timeutil import as_utc
from services.worker import presence
from tests.worker.conftest import make_job


@pytest.fixture
def queue(redis_url: str, sessions: Any, tmp_path: Any) -> Iterator[str]:
    """Dispatch to a queue of its own on the test Redis; yields its name."""
    name = f"admission-{uuid.uuid4().hex[:8]}"
    dispatch.configure(
        dispatch.DispatchSettings(
            _env_file=None, home=tmp_path, broker_url=redis_url, queue=name, worker_slots=1
        )
    )
    yield name
    redis.Redis.from_url(redis_url).delete(name)


def on_broker(redis_url: str, queue: str) -> list[str]:
    """The shard ids of the messages waiting on the queue, oldest first (kombu pushes on the left)."""
    import json

    raw = redis.Redis.from_url(redis_url).lrange(queue, 0, -1)
    return [json.loads(m)["headers"]["argsrepr"].strip("[](),'") for m in reversed(raw)]


def _last_admitted(sessions: Any, owner: str, ago: timedelta) -> None:
    with sessions() as s:
        s.execute(update(Owner).where(Owner.name == owner).values(last_admitted_at=utcnow() - ago))
        s.commit()


def test_free_slots_go_to_the_least_running_owner_then_least_recent_then_priority(sessions: Any) -> None:
    pending = ShardStatus.pending
    a_running, _ = make_job(sessions, generate=1, owner="a")  # one shard in flight (queued)
    _, a_old = make_job(sessions, generate=2, shard_status=pending, owner="a")
    _, a_urgent = make_job(sessions, generate=2, shard_status=pending, owner="a", priority=5)
    _, b = make_job(sessions, generate=2, shard_status=pending, owner="b")
    _, c = make_job(sessions, generate=2, shard_status=pending, owner="c")
    _last_admitted(sessions, "a", timedelta(seconds=30))
    _last_admitted(sessions, "b", timedelta(minutes=1))
    _last_admitted(sessions, "c", timedelta(minutes=2))

    with sessions() as s:
        chosen = [x.shard_id for x in admission.admit(s, capacity=5)]  # 1 in flight: 4 free
    # b and c have nothing running: c (used longer ago), then b. Then all three have one: a was
    # admitted longest ago, and its priority-5 job goes before its older one; then c again.
    assert chosen == [c[0], b[0], a_urgent[0], c[1]]
    with sessions() as s:
        statuses = dict(
            s.execute(select(Shard.id, Shard.status).where(Shard.id.in_([*a_old, *a_urgent, *b, *c]))).all()
        )
        assert {i for i, st in statuses.items() if st == ShardStatus.queued} == set(chosen)
        stamped = as_utc(s.scalar(select(Owner.last_admitted_at).where(Owner.name == "c")))
        assert stamped is not None and stamped > utcnow() - timedelta(seconds=5)
    with sessions() as s:  # full: nothing more until a slot frees
        assert admission.admit(s, capacity=5) == []
    assert a_running


def _ran(
    sessions: Any, shard_ids: list[str], seconds: float, ago: float = 0.0, running: bool = False
) -> None:
    """The shards ran for `seconds`, ending `ago` seconds before now (or are still running)."""
    end = utcnow() - timedelta(seconds=ago)
    with sessions() as s:
        s.execute(
            update(Shard)
            .where(Shard.id.in_(shard_ids))
            .values(
                started_at=end - timedelta(seconds=seconds),
                finished_at=None if running else end,
                status=ShardStatus.running if running else ShardStatus.succeeded,
            )
        )
        s.commit()


def test_an_owner_who_used_the_workers_least_in_the_window_goes_first(sessions: Any) -> None:
    """Slurm-like fair share: b's one running shard (10 s so far) has cost less than a's finished
    flood (3 x 60 s), so b's pending shards go first though a has nothing in flight, until b has been
    charged as much (each shard in flight at the window's mean shard time, 60 s); work older than the
    window is forgotten, and with no window the owner with fewer shards in flight goes first."""
    pending = ShardStatus.pending
    _, a_done = make_job(sessions, generate=3, owner="a")
    _, a_old = make_job(sessions, generate=1, owner="a")
    _, b_running = make_job(sessions, generate=1, owner="b")
    _, a_next = make_job(sessions, generate=2, shard_status=pending, owner="a")
    _, b_next = make_job(sessions, generate=3, shard_status=pending, owner="b")
    _ran(sessions, a_done, seconds=60)
    _ran(sessions, a_old, seconds=500, ago=1000)  # outside a 600 s window
    _ran(sessions, b_running, seconds=10, running=True)
    _last_admitted(sessions, "b", timedelta(seconds=1))  # b admitted more recently: not why it wins

    with sessions() as s:
        used, mean = admission.recent_usage(s, [o.id for o in s.scalars(select(Owner))], utcnow(), 600)
    assert sorted(round(v) for v in used.values()) == [10, 180] and round(mean) == 60
    with sessions() as s:
        chosen = [x.shard_id for x in admission.admit(s, capacity=5, window=600)]
    # b: 10 s + 60 s in flight = 70 < a's 180: b, then b (130), then a (180 <= 190), then b.
    assert chosen == [b_next[0], b_next[1], a_next[0], b_next[2]]


def test_with_no_window_the_owner_with_fewer_shards_in_flight_goes_first(sessions: Any) -> None:
    pending = ShardStatus.pending
    _, a_done = make_job(sessions, generate=3, owner="a")
    _, b_running = make_job(sessions, generate=1, owner="b")
    _, a_next = make_job(sessions, generate=1, shard_status=pending, owner="a")
    make_job(sessions, generate=1, shard_status=pending, owner="b")
    _ran(sessions, a_done, seconds=60)
    _ran(sessions, b_running, seconds=10, running=True)
    with sessions() as s:
        chosen = [x.shard_id for x in admission.admit(s, capacity=2, window=0)]
    assert chosen == [a_next[0]]  # a has none in flight, b one; one slot free


def _short_stage(sessions: Any, owner: str, kind: ShardKind, steps: int = 0) -> tuple[str, str]:
    """A preparing job of `owner`: (job id, its one shard of `kind`, admitted and running)."""
    job_id, _ = make_job(sessions, generate=0, status=JobStatus.preparing, owner=owner)
    with sessions() as s:
        shard = Shard(
            job_id=job_id, seq=0, kind=kind, start=0, stop=steps, status=ShardStatus.running,
            started_at=utcnow(), max_attempts=3,
        )  # fmt: skip
        s.add(shard)
        s.commit()
        return job_id, shard.id


def test_slots_are_kept_for_a_newcomer_whose_job_is_between_short_stages(sessions: Any) -> None:
    """b's prepare runs while a's flood holds the other slots: the slot that frees is kept for b's
    next stage (b's fair share: 4 slots over 2 owners, less its prepare), not given to a; a learn shard
    that has optimiser steps to run keeps none, nor does an owner who has used the workers more."""
    make_job(sessions, generate=2, owner="a")  # in flight
    _, a_next = make_job(sessions, generate=3, shard_status=ShardStatus.pending, owner="a")
    _, prepare = _short_stage(sessions, "b", ShardKind.prepare)
    with sessions() as s:
        assert admission.admit(s, capacity=4) == []  # 1 free, kept for b

    with sessions() as s:  # b's prepare ended and its zero-step learn runs: still kept
        s.execute(update(Shard).where(Shard.id == prepare).values(status=ShardStatus.succeeded))
        s.commit()
    job_b, _ = _short_stage(sessions, "b", ShardKind.learn, steps=0)
    with sessions() as s:
        assert admission.admit(s, capacity=4) == []

    with sessions() as s:  # a learn slice with steps to run would hold the slot a whole slice
        s.execute(update(Shard).where(Shard.job_id == job_b).values(stop=300))
        s.commit()
    with sessions() as s:
        assert [x.shard_id for x in admission.admit(s, capacity=4)] == [a_next[0]]


def test_no_slot_is_kept_for_a_prepare_waiting_out_a_retrys_backoff(sessions: Any) -> None:
    make_job(sessions, generate=2, owner="a")  # in flight
    _, a_next = make_job(sessions, generate=1, shard_status=ShardStatus.pending, owner="a")
    _, prepare = _short_stage(sessions, "b", ShardKind.prepare)
    with sessions() as s:
        s.execute(
            update(Shard)
            .where(Shard.id == prepare)
            .values(status=ShardStatus.pending, not_before=utcnow() + timedelta(minutes=5))
        )
        s.commit()
    with sessions() as s:
        assert [x.shard_id for x in admission.admit(s, capacity=3)] == [a_next[0]]


def test_an_owner_who_used_more_keeps_no_slots_from_one_who_used_less(sessions: Any) -> None:
    """a prepares, but has used 180 s of the window; b, with two shards in flight, has used less."""
    _, a_done = make_job(sessions, generate=3, owner="a")
    _ran(sessions, a_done, seconds=60)
    _short_stage(sessions, "a", ShardKind.prepare)
    make_job(sessions, generate=2, owner="b")  # in flight
    _, b_next = make_job(sessions, generate=1, shard_status=ShardStatus.pending, owner="b")
    with sessions() as s:
        assert [x.shard_id for x in admission.admit(s, capacity=4, window=600)] == [b_next[0]]


def test_only_admitted_shards_reach_the_broker_and_never_a_cancelled_jobs(
    sessions: Any, queue: str, redis_url: str
) -> None:
    pending = ShardStatus.pending
    flood = [make_job(sessions, generate=2, shard_status=pending, owner="a") for _ in range(3)]
    _, (b_shard, _) = make_job(sessions, generate=2, shard_status=pending, owner="b")
    for job_id, _ in flood:
        with sessions() as s:
            jobs.request_cancel(s, job_id)
    with sessions() as s:
        sent = dispatch.dispatch(s)  # no worker reported: worker_slots=1, one shard in flight
    assert sent == [b_shard]
    assert on_broker(redis_url, queue) == [b_shard]
    with sessions() as s:
        assert dispatch.dispatch(s) == []  # the slot is taken until b's shard ends
        flooded = [i for _, ids in flood for i in ids]
        assert set(s.scalars(select(Shard.status).where(Shard.id.in_(flooded)))) == {ShardStatus.cancelled}


def test_capacity_is_the_live_workers_slots_times_the_in_flight_setting(
    sessions: Any, queue: str, redis_url: str
) -> None:
    with sessions() as s:
        presence.report(s, "w1@host", slots=2, seen_seconds=60)
        presence.report(s, "w2@host", slots=1, seen_seconds=60)
        s.add(WorkerPresence(name="gone@host", slots=8, seen_at=utcnow() - timedelta(minutes=5)))
        s.commit()
    _, ids = make_job(sessions, generate=5, shard_status=ShardStatus.pending, owner="a")
    with sessions() as s:
        assert dispatch.capacity(s, dispatch.current_settings()) == 3  # the stale worker counts for nothing
        assert dispatch.dispatch(s) == ids[:3]
    assert on_broker(redis_url, queue) == ids[:3]
    with sessions() as s:
        presence.leave(s, "w1@host")
        presence.leave(s, "w2@host")
        # No live worker: the worker_slots setting (1), so a first job is never stuck.
        assert dispatch.capacity(s, dispatch.current_settings()) == 1
