"""Run one shard message: claim, execute the stage, and record the outcome.

Outcomes: success (the stage moved the job on), a stop (the job is cancelling or ended elsewhere),
a lost lease (someone else owns the shard now; write nothing), or a failure (retried after a
backoff, or the job fails: out of attempts or retry budget, or an error a retry cannot fix).
"""

from __future__ import annotations

import logging
import time

from services.common.dispatch import dispatch
from services.common.lifecycle import shards
from services.common.lifecycle.retry import Failure, classify
from services.common.lifecycle.shards import Claim, LeaseLost, Signal
from services.common.models import ShardKind
from services.worker.context import ShardContext, StopRequested
from services.worker.logs import log_context
from services.worker.process import WorkerProcess, current
from services.worker.stages import STAGES

log = logging.getLogger("diffii.worker")


def run_shard(shard_id: str, kind: str, process: WorkerProcess | None = None) -> str:
    """Returns the outcome (for logs and tests): skipped, succeeded, stopped, lost, retry or failed."""
    process = process or current()
    with log_context(shard_id=shard_id, kind=kind, worker=process.name):
        with process.sessions() as session:
            claimed = shards.claim(session, shard_id, process.name, process.settings.lease_seconds)
        if not isinstance(claimed, Claim):
            log.info("shard not claimed", extra={"reason": claimed})
            _admit_next(process)  # a dropped stale message: this slot may take an admitted shard now
            return "skipped"
        if claimed.kind != ShardKind(kind):
            log.error("message kind does not match the shard", extra={"shard_kind": claimed.kind.value})
        with log_context(job_id=claimed.job_id, attempt=claimed.attempt, class_name=claimed.class_name):
            return _run_claimed(process, claimed)


def _run_claimed(process: WorkerProcess, claim: Claim) -> str:
    from diffii_core.errors import Cancelled

    began = time.monotonic()
    log.info("shard started")
    next_ids: list[str] = []
    outcome = "succeeded"
    with ShardContext(process, claim) as ctx:
        try:
            next_ids = STAGES[claim.kind](ctx)
        except (StopRequested, Cancelled, LeaseLost) as exc:
            outcome = _stopped(process, claim, ctx.signal, exc)
        except Exception as exc:
            failure = classify(exc)
            log.warning(
                "shard failed",
                exc_info=failure is Failure.unknown,
                extra={"error": shards.error_text(exc), "failure": failure.value},
            )
            with process.sessions() as session:
                outcome = shards.fail_attempt(session, claim, exc, process.settings.retry_policy())
    # Whatever the outcome, this slot is free: the admission pass fills it (with the stage's next
    # shards if fair share says so). A retry is admitted once its backoff (not_before) is over.
    _admit_next(process)
    log.info(
        "shard finished",
        extra={"outcome": outcome, "seconds": round(time.monotonic() - began, 3), "next": len(next_ids)},
    )
    return outcome


def _admit_next(process: WorkerProcess) -> None:
    try:
        with process.sessions() as session:
            dispatch(session)
    except Exception:  # the sweeper's pass admits them on its next tick
        log.warning("admission pass failed", exc_info=True)


def _stopped(process: WorkerProcess, claim: Claim, signal: Signal, exc: BaseException) -> str:
    if isinstance(exc, LeaseLost) or signal == Signal.lost:
        log.warning("lease lost; leaving the shard to its new owner")
        return "lost"
    with process.sessions() as session:
        stopped = shards.stop(session, claim)
    log.info("shard stopped", extra={"reason": str(exc)})
    return "stopped" if stopped else "lost"
