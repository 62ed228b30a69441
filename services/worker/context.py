"""What a stage sees while it runs one claimed shard: storage, models, progress and stop checks.

A background thread renews the lease while the stage computes (concept learning and inversion have
no natural place to do it), so a live worker never looks dead; a killed one stops renewing and the
sweeper re-queues its shard once the lease runs out.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from services.common.db import session_scope
from services.common.lifecycle import shards
from services.common.lifecycle.shards import Claim, LeaseLost, Signal
from services.common.models import Job

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from services.worker.process import WorkerProcess

log = logging.getLogger("diffii.worker")


class StopRequested(Exception):
    """The job was cancelled or ended while this shard ran."""


class ShardContext:
    def __init__(self, process: WorkerProcess, claim: Claim) -> None:
        self.process = process
        self.settings = process.settings
        self.storage = process.storage
        self.claim = claim
        self.images_done: int | None = None
        self.signal = Signal.ok
        self._last_check = 0.0
        self._stop_thread = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = time.monotonic()

    # -- database --------------------------------------------------------------------------------

    @contextmanager
    def session(self) -> Iterator[Session]:
        with session_scope(self.process.sessions) as session:
            yield session

    def job(self) -> Job:
        with self.session() as s:
            job = s.get(Job, self.claim.job_id)
            if job is None:
                raise LeaseLost(self.claim.shard_id)
            s.expunge(job)
            return job

    # -- liveness ----------------------------------------------------------------------------------

    def _note(self, signal: Signal) -> None:
        if signal != Signal.ok and self.signal == Signal.ok:
            log.info("shard must stop", extra={"reason": signal.value})
            self.signal = signal

    def beat(self) -> None:
        """Renew the lease and record progress now; raise if the shard must not go on."""
        with self.session() as s:
            self._note(shards.heartbeat(s, self.claim, self.settings.lease_seconds, self.images_done))
        self.raise_if_stopped()

    def raise_if_stopped(self) -> None:
        if self.signal == Signal.lost:
            raise LeaseLost(self.claim.shard_id)
        if self.signal == Signal.stop:
            raise StopRequested(self.claim.job_id)

    def should_stop(self) -> bool:
        """Polled by the engine between batches; reads the database at most every half second."""
        now = time.monotonic()
        if self.signal == Signal.ok and now - self._last_check >= 0.5:
            self._last_check = now
            try:
                with self.session() as s:
                    self._note(shards.check(s, self.claim))
            except Exception:  # the database blinking must not kill a healthy shard
                log.warning("stop check failed", exc_info=True)
        return self.signal != Signal.ok

    def _heartbeat_loop(self) -> None:
        while not self._stop_thread.wait(self.settings.heartbeat_seconds):
            try:
                with self.session() as s:
                    self._note(shards.heartbeat(s, self.claim, self.settings.lease_seconds, self.images_done))
            except Exception:
                log.warning("heartbeat failed", exc_info=True)

    def __enter__(self) -> ShardContext:
        self._thread = threading.Thread(target=self._heartbeat_loop, name="diffii-heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_thread.set()
        if self._thread is not None:
            with contextlib.suppress(RuntimeError):
                self._thread.join(timeout=10)
