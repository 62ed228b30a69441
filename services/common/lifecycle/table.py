"""The job and shard state machines as data: every transition, and who may cause it.

The functions in `jobs.py` and `shards.py` look their transition up here and turn it into one
conditional UPDATE (`WHERE status IN <from>`), so the table is what the code enforces; the state
diagrams in docs/ARCHITECTURE.md are rendered from it (`python -m services.common.lifecycle`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from services.common.models import JobStatus as J
from services.common.models import ShardStatus as S
from services.common.statuses import TERMINAL_JOB_STATUSES


class Actor(enum.StrEnum):
    api = "api"  # the REST API, on a user's request
    worker = "worker"  # a worker running (or refusing) a shard
    sweeper = "sweeper"  # the recovery sweep (expired leases, lost messages, stalled cancels)
    dispatch = "dispatch"  # the admission pass, which alone sends shards to the broker (API, worker, sweeper)
    gc = "gc"  # `diffii admin gc` (retention)
    supervisor = "supervisor"  # `diffii up`'s process supervisor, which saw a worker process die


@dataclass(frozen=True)
class Transition:
    sources: tuple[str, ...]  # empty: the row is created
    event: str
    target: str | None  # None: the row is deleted
    actors: tuple[Actor, ...]
    note: str = ""


A = Actor
OPEN_JOB = (J.queued, J.preparing, J.learning, J.generating, J.packaging)
RUNNING_JOB = (J.preparing, J.learning, J.generating, J.packaging)
OPEN_SHARD = (S.waiting, S.pending, S.queued, S.running)
SENDABLE_SHARD = (S.pending, S.queued)
IN_FLIGHT_SHARD = (S.queued, S.running)  # admitted: what counts against the workers' slots


def _t(sources: Iterable[str], event: str, target: str | None, *actors: Actor, note: str = "") -> Transition:
    return Transition(tuple(sources), event, target, tuple(actors), note)


JOB_TRANSITIONS: tuple[Transition, ...] = (
    _t((), "submit", J.queued, A.api),
    _t((J.queued,), "start", J.preparing, A.worker, note="the prepare shard is claimed"),
    _t((J.preparing,), "prepared", J.learning, A.worker),
    _t((J.preparing,), "prepared", J.generating, A.worker, note="methods without concept learning"),
    _t((J.preparing,), "prepared", J.packaging, A.worker, note="nothing to generate"),
    _t((J.learning,), "learned", J.generating, A.worker),
    _t((J.learning,), "learned", J.packaging, A.worker, note="nothing to generate"),
    _t((J.generating,), "generated", J.packaging, A.worker, note="the last generate shard finished"),
    _t((J.packaging,), "packaged", J.succeeded, A.worker),
    _t(OPEN_JOB, "fail", J.failed, A.worker, A.sweeper, note="deterministic error, or out of retries"),
    _t(OPEN_JOB, "cancel", J.cancelled, A.api, note="no shard is running: at once"),
    _t(RUNNING_JOB, "cancel", J.cancelling, A.api, note="a shard is running"),
    _t((J.cancelling,), "stopped", J.cancelled, A.worker, A.sweeper, note="no shard is running any more"),
    _t(
        TERMINAL_JOB_STATUSES,
        "delete",
        None,
        A.api,
        A.gc,
        note="DELETE /v1/jobs/{id}; objects first, then rows",
    ),
)

SHARD_TRANSITIONS: tuple[Transition, ...] = (
    _t((), "create", S.pending, A.api, note="the prepare shard"),
    _t((), "create", S.waiting, A.worker, note="prepare creates the job's other shards"),
    _t((S.waiting,), "ready", S.pending, A.worker, note="its stage is reached"),
    _t(
        (S.pending,), "admit", S.queued, A.dispatch, note="fair share gave it a slot; then sent to the broker"
    ),
    _t((S.queued,), "unsent", S.pending, A.dispatch, note="the broker refused it: the slot is given back"),
    _t((S.queued,), "sent", S.queued, A.dispatch, note="re-sent: its message looked lost"),
    _t((S.queued,), "claim", S.running, A.worker, note="attempts + 1; one claimant wins"),
    _t((S.running,), "heartbeat", S.running, A.worker, note="fenced by worker and attempt"),
    _t((S.running,), "succeed", S.succeeded, A.worker),
    _t((S.running,), "retry", S.pending, A.worker, note="transient error: not_before = now + backoff"),
    _t((S.running,), "expire", S.pending, A.sweeper, note="lease ran out: a lost worker, retried"),
    _t((S.running,), "release", S.pending, A.supervisor, note="its worker process died: at once, fenced"),
    _t(SENDABLE_SHARD, "resume", S.running, A.worker, note="its expired attempt's worker was alive"),
    _t((S.running,), "fail", S.failed, A.worker, A.sweeper, note="deterministic, or out of retries"),
    _t((S.running,), "stop", S.cancelled, A.worker, A.sweeper, note="its job is cancelling"),
    _t(OPEN_SHARD, "close", S.cancelled, A.api, A.worker, A.sweeper, note="its job ended"),
)


class IllegalTransition(RuntimeError):
    """A code path asked for a transition the table does not have (a bug, never a user error)."""


def lookup(
    table: tuple[Transition, ...], event: str, actor: Actor, target: str | None = None
) -> tuple[tuple[str, ...], str | None]:
    """(allowed source states, target) of an event caused by this actor; IllegalTransition if none."""
    named = [t for t in table if t.event == event and (target is None or t.target == target)]
    if not named:
        raise IllegalTransition(f"no transition {event!r} to {target!r}")
    rows = [t for t in named if actor in t.actors]
    if not rows:
        raise IllegalTransition(f"{actor.value} may not cause {event!r}")
    targets = {t.target for t in rows}
    if len(targets) != 1:
        raise IllegalTransition(f"{event!r} has several targets {sorted(map(str, targets))}; name one")
    sources = tuple(dict.fromkeys(s for t in rows for s in t.sources))
    return sources, rows[0].target


def mermaid(table: tuple[Transition, ...]) -> str:
    """A mermaid stateDiagram of the table (the docs embed its output)."""
    lines = ["stateDiagram-v2"]
    for t in table:
        label = f"{t.event} ({', '.join(a.value for a in t.actors)})"
        target = "[*]" if t.target is None else str(t.target)
        for source in t.sources or ("[*]",):
            lines.append(f"    {source} --> {target} : {label}")
    return "\n".join(lines)


def markdown_table(table: tuple[Transition, ...]) -> str:
    lines = ["| from | event | to | who | note |", "|---|---|---|---|---|"]
    for t in table:
        sources = ", ".join(map(str, t.sources)) or "(new row)"
        target = "(row deleted)" if t.target is None else str(t.target)
        who = ", ".join(a.value for a in t.actors)
        lines.append(f"| {sources} | {t.event} | {target} | {who} | {t.note} |")
    return "\n".join(lines)
