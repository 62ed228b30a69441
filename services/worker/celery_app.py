"""The Celery app of the workers: `celery -A services.worker.celery_app worker` (or `diffii worker`).

Delivery settings make a task survive a dying worker: the message is acknowledged only after the
task returns (acks_late), goes back to the queue if the process is killed (reject_on_worker_lost),
and each process reserves one message at a time (prefetch 1), so a long GPU shard never holds others
hostage. Task time limits stay below the broker's visibility timeout (checked in WorkerSettings).

The model is loaded in each task process after fork (worker_process_init) and kept; the recovery
sweep runs on a timer in the main process of every worker.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from typing import Any

from celery import Celery, bootsteps, signals

from diffii_core.threads import configure_threads, quiet_openmp
from services.common.dispatch import DEFAULT_QUEUE, broker_transport_options
from services.worker.logs import use_json
from services.worker.settings import WorkerSettings

log = logging.getLogger("diffii.worker")
quiet_openmp()  # OpenMP reads it when torch loads, in the task processes: sleep, don't spin

settings = WorkerSettings()

app = Celery("diffii", broker=settings.broker_url, include=["services.worker.tasks"])
app.conf.update(
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_soft_time_limit=settings.soft_time_limit,
    task_time_limit=settings.time_limit,
    broker_transport_options=broker_transport_options(settings.broker_url, settings.visibility_timeout),
    task_serializer="json",
    accept_content=["json"],
    result_serializer="json",
    task_ignore_result=True,  # state lives in the database; no result backend to run
    task_default_queue=DEFAULT_QUEUE,
    task_queues=None,
    worker_concurrency=settings.concurrency,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,
    enable_utc=True,
)


# -- logging ------------------------------------------------------------------------------------------


def _json_logging(**_: Any) -> None:
    use_json(level=logging.INFO)
    for name in ("celery", "diffii"):
        logging.getLogger(name).setLevel(logging.INFO)


signals.setup_logging.connect(_json_logging, weak=False)  # replaces Celery's own log setup


# -- task processes -----------------------------------------------------------------------------------


@signals.worker_process_init.connect
def _init_task_process(**_: Any) -> None:
    from services.common.db import dispose
    from services.common.pdeathsig import die_with_parent
    from services.worker import process

    die_with_parent()  # a task process never outlives its worker, however the worker died

    # The main process's sweeper engine came along with fork; drop its sockets without closing them.
    if _sweeper_state.get("sessions") is not None:
        dispose(_sweeper_state["sessions"], close=False)
        _sweeper_state.clear()
    worker_settings = WorkerSettings()
    configure_threads(share=worker_settings.concurrency)  # the CPUs it may use, shared by the processes
    process.init_process(worker_settings, preload=True)
    log.info("task process ready", extra={"pid": os.getpid()})


@signals.task_prerun.connect
def _fit_threads(**_: Any) -> None:
    """With DIFFII_THREADS=fit-load each task measures the other busy processes again."""
    configure_threads(share=settings.concurrency)


@signals.worker_process_shutdown.connect
def _close_task_process(**_: Any) -> None:
    from services.worker import process

    if process._current is not None:
        process._current.close()


# -- recovery sweep in the main process ----------------------------------------------------------------

_sweeper_state: dict[str, Any] = {}


def run_sweep() -> None:
    from services.worker.sweeper import sweep

    try:
        sweep(
            _main_sessions(),
            resend_after=settings.resend_after_seconds,
            policy=settings.retry_policy(),
        )
    except Exception:  # the next tick tries again; a sweep must never take the worker down
        log.exception("sweep failed")


class Sweeper(bootsteps.StartStopStep):
    requires = ("celery.worker.components:Timer",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None

    def start(self, parent: Any) -> None:
        if settings.sweep:
            run_sweep()  # at once: this worker may be the first to come back after an outage
            self.tref = parent.timer.call_repeatedly(settings.sweep_seconds, run_sweep, priority=10)

    def stop(self, parent: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None


class Presence(bootsteps.StartStopStep):
    """This worker's row in `workers` (its task processes), refreshed every worker_seen_seconds / 4:
    admission sends at most `in_flight_per_slot` shards per live task process. A thread of its own,
    not the worker's timer: a solo-pool worker runs its task in the main thread, which would starve a
    timer for as long as a shard runs. Removed when the worker stops."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def _report(self) -> None:
        from services.common.dispatch import dispatch
        from services.worker import presence

        try:
            with _main_sessions()() as session:
                presence.report(session, self.name, settings.concurrency, settings.worker_seen_seconds)
                dispatch(session)  # new slots: fill them now rather than at the next shard's end
        except Exception:  # the next tick tries again; presence must never take the worker down
            log.exception("could not report this worker's presence")

    def _loop(self) -> None:
        while not self.stopping.wait(settings.worker_seen_seconds / 4):
            self._report()

    def start(self, parent: Any) -> None:
        self._report()
        self.thread = threading.Thread(target=self._loop, name="diffii-presence", daemon=True)
        self.thread.start()

    def stop(self, parent: Any) -> None:
        from services.worker import presence

        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
        try:
            with _main_sessions()() as session:
                presence.leave(session, self.name)
        except Exception:
            log.warning("could not remove this worker's presence; it ages out", exc_info=True)


def _main_sessions() -> Any:
    """The worker main process's sessions (sweep and presence); a forked task process drops them."""
    from services.common.db import make_session_factory

    if "sessions" not in _sweeper_state:
        _sweeper_state["sessions"] = make_session_factory(settings)
    return _sweeper_state["sessions"]


app.steps["worker"].add(Sweeper)
app.steps["worker"].add(Presence)
