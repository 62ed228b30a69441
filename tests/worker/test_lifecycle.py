"""The lifecycle on Postgres and on SQLite: claiming, fencing, retries, fan-in, cancel, the sweep.

These drive the database functions directly (no broker round trip needed: dispatch goes to
kombu's in-memory transport), so every race and recovery path is checked in milliseconds.
"""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select

from services.common.lifecycle import shards as leases
from services.common.lifecycle.jobs import request_cancel
from services.common.lifecycle.retry import RetryPolicy
from services.common.lifecycle.shards import Claim, LeaseLost, Signal
from services.common.models import Job, JobStatus, Shard, ShardKind, ShardStatus, utcnow
from services.worker.shard_plan import split_ranges
from services.worker.sweeper import sweep
from tests.worker.conftest import LEASE, claim, make_job

NO_WAIT = RetryPolicy(base_seconds=0, jitter=0)  # retries due at once: these tests count them


def test_only_one_claimant_wins(sessions: Any) -> None:
    _, (shard_id, *_) = make_job(sessions)
    results = []
    barrier = threading.Barrier(4)

    def racer(name: str) -> None:
        barrier.wait()
        results.append(claim(sessions, shard_id, name))

    threads = [threading.Thread(target=racer, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    won = [r for r in results if isinstance(r, Claim)]
    assert len(won) == 1 and won[0].attempt == 1
    assert isinstance(claim(sessions, shard_id, "late"), str)  # a duplicate delivery later: ignored


def test_a_taken_over_worker_can_write_nothing(sessions: Any) -> None:
    _, (shard_id, *_) = make_job(sessions)
    first = claim(sessions, shard_id)
    assert isinstance(first, Claim)
    with sessions() as s:  # the sweeper decides the worker is dead and re-queues the shard
        s.execute(
            Shard.__table__.update()
            .where(Shard.id == shard_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
        s.commit()
    sweep(sessions, resend_after=60, policy=NO_WAIT)
    second = claim(sessions, shard_id, "w2")
    assert isinstance(second, Claim) and second.attempt == 2
    with sessions() as s:
        assert leases.heartbeat(s, first, LEASE, images_done=3) == Signal.lost
        with pytest.raises(LeaseLost):
            leases.succeed(s, first, 1.0)
        s.rollback()
        assert leases.heartbeat(s, second, LEASE, images_done=1) == Signal.ok


def test_fan_in_dispatches_packaging_exactly_once_under_races(sessions: Any) -> None:
    job_id, ids = make_job(sessions, generate=6)
    claims = [claim(sessions, i) for i in ids]
    assert all(isinstance(c, Claim) for c in claims)
    results: list[list[str]] = []
    barrier = threading.Barrier(len(claims))

    def finish(c: Claim) -> None:
        barrier.wait()
        with sessions() as s:
            results.append(leases.finish_generate(s, c, 1.0))
            s.commit()

    threads = [threading.Thread(target=finish, args=(c,)) for c in claims]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(1 for r in results if r) == 1
    with sessions() as s:
        job = s.get(Job, job_id)
        package = s.scalar(select(Shard).where(Shard.job_id == job_id, Shard.kind == ShardKind.package))
        assert job.status == JobStatus.packaging and package.status == ShardStatus.pending


def test_retries_then_fails_the_job_naming_the_class(sessions: Any) -> None:
    job_id, (shard_id, *_) = make_job(sessions)
    for attempt in (1, 2, 3):
        c = claim(sessions, shard_id)
        assert isinstance(c, Claim) and c.attempt == attempt
        with sessions() as s:
            outcome = leases.fail_attempt(s, c, ValueError("boom"), NO_WAIT)
        assert outcome == ("retry" if attempt < 3 else "failed")
    with sessions() as s:
        job, shard = s.get(Job, job_id), s.get(Shard, shard_id)
        assert job.status == JobStatus.failed
        assert job.message == "class 'c0' failed after 3 attempts: ValueError: boom"
        assert shard.status == ShardStatus.failed and shard.attempts == 3
        others = s.scalars(select(Shard.status).where(Shard.job_id == job_id, Shard.id != shard_id)).all()
        assert set(others) == {ShardStatus.cancelled}


def test_user_errors_fail_at_once(sessions: Any) -> None:
    from diffii_core.errors import DatasetError

    job_id, (shard_id, *_) = make_job(sessions)
    c = claim(sessions, shard_id)
    assert isinstance(c, Claim)
    with sessions() as s:
        assert leases.fail_attempt(s, c, DatasetError("class 'x' has no usable image"), NO_WAIT) == "failed"
    with sessions() as s:
        assert s.get(Job, job_id).message == (
            "class 'c0' failed (DatasetError, not retried): class 'x' has no usable image"
        )
        assert s.get(Shard, shard_id).attempts == 1


def test_sweeper_requeues_dead_workers_and_fails_after_the_last_attempt(sessions: Any) -> None:
    job_id, (shard_id, *_) = make_job(sessions)

    def expire() -> None:
        with sessions() as s:
            s.execute(
                Shard.__table__.update()
                .where(Shard.id == shard_id)
                .values(lease_expires_at=utcnow() - timedelta(seconds=5))
            )
            s.commit()

    for attempt in (1, 2):
        assert isinstance(claim(sessions, shard_id, f"w{attempt}"), Claim)
        expire()
        report = sweep(sessions, resend_after=60, policy=NO_WAIT)
        assert report.requeued == [shard_id] and shard_id in report.admitted
    assert isinstance(claim(sessions, shard_id, "w3"), Claim)
    expire()
    report = sweep(sessions, resend_after=60, policy=NO_WAIT)
    assert report.failed_jobs == [job_id]
    with sessions() as s:
        message = s.get(Job, job_id).message
    assert message.startswith("class 'c0' failed after 3 attempts: worker w3 lost (no heartbeat since")


def test_sweeper_admits_unsent_and_resends_lost_messages(sessions: Any) -> None:
    _, (never_sent, lost, fresh) = make_job(sessions)
    long_ago = utcnow() - timedelta(minutes=10)
    with sessions() as s:  # never_sent: its process died before the admission pass
        s.execute(Shard.__table__.update().where(Shard.id == never_sent).values(status=ShardStatus.pending))
        s.execute(
            Shard.__table__.update()
            .where(Shard.id == lost)
            .values(status=ShardStatus.queued, enqueued_at=long_ago)
        )
        s.execute(
            Shard.__table__.update()
            .where(Shard.id == fresh)
            .values(status=ShardStatus.queued, enqueued_at=utcnow())
        )
        s.commit()
    report = sweep(sessions, resend_after=60)
    assert report.resent == [lost]  # nothing running anywhere: its message is lost
    assert report.admitted == [never_sent]
    with sessions() as s:
        statuses = {
            sh.id: sh.status for sh in s.scalars(select(Shard).where(Shard.id.in_([never_sent, lost])))
        }
    assert set(statuses.values()) == {ShardStatus.queued}  # sent to the (in-memory) broker


def test_cancel_stops_everything_and_claims_close_stale_messages(sessions: Any) -> None:
    job_id, (running, waiting, _) = make_job(sessions)
    c = claim(sessions, running)
    assert isinstance(c, Claim)
    with sessions() as s:
        assert request_cancel(s, job_id) == JobStatus.cancelling  # a shard runs: two-phase
        assert request_cancel(s, job_id) == JobStatus.cancelling  # asking again changes nothing
    with sessions() as s:
        assert leases.check(s, c) == Signal.stop  # the running worker stops at its next check
        assert s.get(Shard, waiting).status == ShardStatus.cancelled  # not started: closed at once
    assert claim(sessions, waiting) == f"job is {JobStatus.cancelling}"
    with sessions() as s:
        assert leases.stop(s, c) is True  # the last running shard stopped: the cancel is complete
    with sessions() as s:
        assert s.get(Job, job_id).status == JobStatus.cancelled
        assert request_cancel(s, job_id) is None  # already ended


@pytest.mark.parametrize(
    ("total", "size", "expected"),
    [(0, 5, []), (5, 5, [(0, 5)]), (8, 3, [(0, 3), (3, 5), (5, 8)]), (10, 4, [(0, 3), (3, 7), (7, 10)])],
)
def test_split_ranges(total: int, size: int, expected: list[tuple[int, int]]) -> None:
    ranges = split_ranges(total, size)
    assert ranges == expected
    assert all(stop - start <= size for start, stop in ranges)


def test_a_starved_but_live_worker_resumes_its_expired_attempt(sessions: Any) -> None:
    """A heartbeat thread starved of CPU lets the lease lapse; the sweeper re-queues the shard. If
    nobody claimed it since, the live worker takes it back: no attempt is spent, no work is lost."""
    _, (shard_id, *_) = make_job(sessions)
    c = claim(sessions, shard_id)
    assert isinstance(c, Claim)
    with sessions() as s:
        s.execute(
            Shard.__table__.update()
            .where(Shard.id == shard_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
        s.commit()
    assert sweep(sessions, resend_after=60, policy=NO_WAIT).requeued == [shard_id]
    with sessions() as s:
        assert leases.check(s, c) == Signal.ok  # expired, but still our attempt
        assert leases.heartbeat(s, c, LEASE, images_done=2) == Signal.ok
    assert claim(sessions, shard_id, "w2") == "shard is running"  # the re-sent message is dropped
    with sessions() as s:
        leases.succeed(s, c, 1.0)
        s.commit()
        row = s.get(Shard, shard_id)
        assert row.status == ShardStatus.succeeded and row.attempts == 1


def test_an_expired_attempt_that_another_worker_claimed_cannot_resume(sessions: Any) -> None:
    _, (shard_id, *_) = make_job(sessions)
    c = claim(sessions, shard_id)
    assert isinstance(c, Claim)
    with sessions() as s:
        s.execute(
            Shard.__table__.update()
            .where(Shard.id == shard_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
        s.commit()
    sweep(sessions, resend_after=60, policy=NO_WAIT)
    assert isinstance(claim(sessions, shard_id, "w2"), Claim)
    with sessions() as s:
        assert leases.heartbeat(s, c, LEASE) == Signal.lost
        with pytest.raises(LeaseLost):
            leases.succeed(s, c, 1.0)


def test_a_dead_workers_shards_are_released_at_once_and_fenced(sessions: Any) -> None:
    """diffii up's supervisor saw the worker process of instance "i1" die: its running shard goes back
    to the queue with its lease still far off, the other instance's shard stays, and the dead
    process, were it somehow alive, could neither resume, heartbeat nor finish the released attempt."""
    from services.worker.sweeper import release_dead_worker

    _, (dead_id, live_id, _) = make_job(sessions)
    dead = claim(sessions, dead_id, "host:11@i1")
    live = claim(sessions, live_id, "host:12@i2")
    assert isinstance(dead, Claim) and isinstance(live, Claim)
    assert release_dead_worker(sessions, "i1", "died (exit -9)", NO_WAIT) == [dead_id]
    with sessions() as s:
        released, kept = s.get(Shard, dead_id), s.get(Shard, live_id)
        assert released.status == ShardStatus.queued  # sent to the broker again
        assert released.worker is None and released.attempts == 1 and released.error == "died (exit -9)"
        assert kept.status == ShardStatus.running and kept.worker == "host:12@i2"
    with sessions() as s:
        assert leases.heartbeat(s, dead, LEASE) == Signal.lost  # no resume: the worker is cleared
        with pytest.raises(LeaseLost):
            leases.succeed(s, dead, 1.0)
        s.rollback()
    second = claim(sessions, dead_id, "host:13@i3")
    assert isinstance(second, Claim) and second.attempt == 2
    # A second notice (or one naming a prefix of another instance) releases nothing more.
    assert release_dead_worker(sessions, "i1", "again", NO_WAIT) == []
    assert release_dead_worker(sessions, "i", "a prefix", NO_WAIT) == []


def test_a_release_leaves_the_last_attempt_and_stopping_jobs_to_the_lease(sessions: Any) -> None:
    from services.worker.sweeper import release_dead_worker

    _, (shard_id, *_) = make_job(sessions)
    with sessions() as s:
        s.execute(Shard.__table__.update().where(Shard.id == shard_id).values(max_attempts=1))
        s.commit()
    assert isinstance(claim(sessions, shard_id, "host:11@i1"), Claim)
    assert release_dead_worker(sessions, "i1", "died", NO_WAIT) == []  # no attempt left: the sweeper fails it
    job_id, (other, *_) = make_job(sessions)
    assert isinstance(claim(sessions, other, "host:12@i2"), Claim)
    with sessions() as s:
        request_cancel(s, job_id)
    assert release_dead_worker(sessions, "i2", "died", NO_WAIT) == []  # cancelling: the sweeper stops it
    with sessions() as s:
        assert s.get(Shard, shard_id).status == s.get(Shard, other).status == ShardStatus.running
