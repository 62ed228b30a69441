"""The transition table is what the code enforces: every event moves exactly its source states,
only the actors it names may cause it, the database refuses unknown states, and no module outside
the lifecycle writes a status. Retries wait (backoff, jitter) and stop (count, budget)."""

from __future__ import annotations

import ast
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import IntegrityError

from diffii_core.errors import DatasetError, ModelError
from services.common.lifecycle import jobs, shards
from services.common.lifecycle.retry import Failure, RetryPolicy, classify
from services.common.lifecycle.table import (
    JOB_TRANSITIONS,
    SHARD_TRANSITIONS,
    Actor,
    IllegalTransition,
    lookup,
)
from services.common.models import Job, JobStatus, Shard, ShardStatus, utcnow
from services.common.storage import ObjectNotFound, StorageError
from services.worker.sweeper import sweep
from tests.worker.conftest import claim, make_job

ROOT = Path(__file__).resolve().parents[2]
JOB_EVENTS = sorted({(t.event, t.target) for t in JOB_TRANSITIONS if t.sources and t.target})


@pytest.mark.parametrize(("event", "target"), JOB_EVENTS, ids=[f"{e}->{t}" for e, t in JOB_EVENTS])
def test_each_job_event_moves_exactly_its_source_states(sessions: Any, event: str, target: str) -> None:
    row = next(t for t in JOB_TRANSITIONS if t.event == event and t.target == target)
    actor = row.actors[0]
    sources, _ = lookup(JOB_TRANSITIONS, event, actor, JobStatus(target))
    job_id, _ = make_job(sessions, generate=0)
    for status in JobStatus:
        with sessions() as s:
            s.execute(update(Job).where(Job.id == job_id).values(status=status))
            moved = jobs.move(s, job_id, event, actor, JobStatus(target))
            s.commit()
            now = s.scalar(select(Job.status).where(Job.id == job_id))
        assert moved == (status in sources), (status, event)
        assert now == (JobStatus(target) if moved else status)


SHARD_EVENTS = sorted({t.event for t in SHARD_TRANSITIONS if t.sources})


@pytest.mark.parametrize("event", SHARD_EVENTS)
def test_each_shard_event_moves_exactly_its_source_states(sessions: Any, event: str) -> None:
    row = next(t for t in SHARD_TRANSITIONS if t.event == event)
    _, (shard_id, *_) = make_job(sessions, generate=1)
    for status in ShardStatus:
        with sessions() as s:
            s.execute(update(Shard).where(Shard.id == shard_id).values(status=status))
            moved = shards.move_where(s, (Shard.id == shard_id,), event, row.actors[0])
            s.commit()
            now = s.scalar(select(Shard.status).where(Shard.id == shard_id))
        assert bool(moved) == (status in row.sources), (status, event)
        assert now == (row.target if moved else status)


@pytest.mark.parametrize(
    ("table", "event", "actor"),
    [
        (JOB_TRANSITIONS, "fail", Actor.api),  # the API never fails a job
        (JOB_TRANSITIONS, "packaged", Actor.sweeper),
        (JOB_TRANSITIONS, "delete", Actor.worker),
        (SHARD_TRANSITIONS, "claim", Actor.sweeper),
        (SHARD_TRANSITIONS, "expire", Actor.worker),
        (SHARD_TRANSITIONS, "teleport", Actor.worker),
    ],
)
def test_an_actor_the_table_does_not_name_is_refused(table: Any, event: str, actor: Actor) -> None:
    with pytest.raises(IllegalTransition):
        lookup(table, event, actor)


@pytest.mark.parametrize(
    ("table", "column", "value"),
    [("jobs", "status", "paused"), ("shards", "status", "limbo"), ("shards", "kind", "train")],
)
def test_the_database_refuses_a_state_outside_the_table(
    sessions: Any, table: str, column: str, value: str
) -> None:
    job_id, _ = make_job(sessions, generate=1)
    key = "id" if table == "jobs" else "job_id"
    with sessions() as s, pytest.raises(IntegrityError):
        s.execute(text(f"UPDATE {table} SET {column} = :v WHERE {key} = :id"), {"v": value, "id": job_id})
        s.flush()


def test_no_module_outside_the_lifecycle_writes_a_status() -> None:
    """`status=` in an UPDATE's values or a constructor, or `.status = ...`, only in the lifecycle."""
    offenders = []
    for path in sorted((ROOT / "services").rglob("*.py")):
        if "lifecycle" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "status":
                source = ast.unparse(node.value)
                if "JobStatus" in source or "ShardStatus" in source:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.value.lineno}")
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Attribute) and target.attr == "status":
                        offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


def test_the_docs_show_the_diagram_of_the_enforced_table() -> None:
    from services.common.lifecycle.__main__ import render

    assert render() in (ROOT / "docs" / "ARCHITECTURE.md").read_text()


# -- retries -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "failure"),
    [
        (DatasetError("class 'x' has no usable image"), Failure.deterministic),
        (ModelError("model 'sd' cannot load"), Failure.deterministic),
        (StorageError("S3 unreachable"), Failure.transient),
        (ConnectionError("reset by peer"), Failure.transient),
        (ObjectNotFound("jobs/x/pools/0.safetensors"), Failure.unknown),
        (ValueError("a bug"), Failure.unknown),
    ],
)
def test_failures_are_classified(exc: BaseException, failure: Failure) -> None:
    assert classify(exc) is failure


def test_backoff_grows_exponentially_with_jitter_up_to_a_cap() -> None:
    policy = RetryPolicy(max_attempts=10, base_seconds=4, factor=2, max_seconds=30, jitter=0.5)
    rng = random.Random(1)
    for attempt, ceiling in [(1, 4), (2, 8), (3, 16), (4, 30), (7, 30)]:
        draws = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in draws)
        assert max(draws) - min(draws) > ceiling / 4  # spread out, so racing retries do not collide


def test_retry_stops_at_the_count_the_budget_or_a_deterministic_error() -> None:
    policy = RetryPolicy(max_attempts=3, base_seconds=10, jitter=0, budget_seconds=60)
    now = utcnow()
    assert policy.next_try(Failure.transient, 1, now, now) == now + timedelta(seconds=10)
    assert policy.next_try(Failure.unknown, 2, now, now) == now + timedelta(seconds=20)
    assert policy.next_try(Failure.transient, 3, now, now) is None  # out of attempts
    assert policy.next_try(Failure.deterministic, 1, now, now) is None
    began = now - timedelta(seconds=55)
    assert policy.next_try(Failure.transient, 1, began, now) is None  # the wait would pass the budget


def test_a_transient_failure_waits_its_backoff_before_it_is_sent_again(sessions: Any) -> None:
    _, (shard_id, *_) = make_job(sessions)
    c = claim(sessions, shard_id)
    assert isinstance(c, shards.Claim)
    policy = RetryPolicy(base_seconds=30, jitter=0)
    with sessions() as s:
        assert shards.fail_attempt(s, c, ConnectionError("database went away"), policy) == "retry"
    with sessions() as s:
        row = s.get(Shard, shard_id)
        assert row.status == ShardStatus.pending and row.error == "ConnectionError: database went away"
        not_before = row.not_before
    assert shard_id not in sweep(sessions, resend_after=1, now=utcnow() + timedelta(seconds=20)).admitted
    with sessions() as s:  # the pass admits what is due now: wait the backoff out for real
        s.execute(update(Shard).where(Shard.id == shard_id).values(not_before=utcnow()))
        s.commit()
    assert shard_id in sweep(sessions, resend_after=1).admitted
    again = claim(sessions, shard_id, "w2")
    assert isinstance(again, shards.Claim) and again.attempt == 2
    assert again.first_started_at == c.first_started_at  # the budget counts from the first attempt
    assert not_before is not None


def test_a_spent_retry_budget_fails_the_job_saying_so(sessions: Any) -> None:
    job_id, (shard_id, *_) = make_job(sessions)
    c = claim(sessions, shard_id)
    assert isinstance(c, shards.Claim)
    policy = RetryPolicy(base_seconds=10, jitter=0, budget_seconds=60)
    later = utcnow() + timedelta(seconds=55)
    with sessions() as s:
        assert shards.fail_attempt(s, c, StorageError("S3 unreachable"), policy, now=later) == "failed"
    with sessions() as s:
        message = s.get(Job, job_id).message
    assert message == (
        "class 'c0' failed after 1 attempt: StorageError: S3 unreachable (retry budget of 60 s spent)"
    )
