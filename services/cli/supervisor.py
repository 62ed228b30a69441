"""The process supervisor of `diffii up`: keeps the API and the worker running, and never leaves
them behind.

- A child that dies (the OOM killer's SIGKILL on a big job, say) is restarted after a backoff that
  doubles with each quick death (1 s up to 30 s) and resets once a child has run a minute.
- Each start gets a fresh instance id (`DIFFII_WORKER_INSTANCE`), which the worker's task processes
  put in the name they claim shards under. When a child dies, what is left of its process group is
  killed and `on_exit` hears of it with that id: `diffii up` then releases the dead worker's shards at
  once (services/worker/sweeper.release_dead_worker), fenced by worker and attempt, instead of
  waiting out their lease; a job's bytes do not change.
- Every start, exit and restart is logged and written to a small JSON state file that the API's
  `/readyz` reads (`DIFFII_SUPERVISOR_STATE`), so readiness says when the worker is down.
- On Linux each child gets PR_SET_PDEATHSIG: the kernel kills it when the supervisor dies, even by
  SIGKILL (children sit in sessions of their own, so no terminal signal reaches them otherwise).
  The worker's own task processes do the same towards it (services/worker/celery_app.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from services.common.pdeathsig import die_with_parent

BACKOFF_START = 1.0
BACKOFF_MAX = 30.0
HEALTHY_AFTER = 60.0  # seconds a child must run before its backoff resets


def _child_preexec(parent: int) -> Callable[[], None]:
    def preexec() -> None:
        die_with_parent()
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


@dataclass
class Child:
    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restarts: int = 0
    backoff: float = BACKOFF_START
    restart_at: float | None = None
    last_exit: int | None = None
    instance: str = ""  # of the current (or last) start
    history: list[str] = field(default_factory=list)

    def state(self) -> dict[str, object]:
        running = self.popen is not None and self.popen.poll() is None
        return {
            "state": "running" if running else "restarting",
            "pid": self.popen.pid if running and self.popen else None,
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "restart_in": None
            if running or self.restart_at is None
            else round(max(0.0, self.restart_at - time.monotonic()), 1),
        }


class Supervisor:
    def __init__(
        self,
        commands: dict[str, list[str]],
        env: dict[str, str],
        state_file: Path,
        echo: Callable[[str], None],
        on_exit: Callable[[Child], None] | None = None,
    ) -> None:
        self.children = {name: Child(name, argv) for name, argv in commands.items()}
        self.env = env
        self.state_file = state_file
        self.echo = echo
        self.on_exit = on_exit

    def start(self, child: Child) -> None:
        child.instance = uuid.uuid4().hex
        env = {**self.env, "DIFFII_WORKER_INSTANCE": child.instance}
        # Own session: Ctrl-C reaches only us, and we stop each child with its grandchildren.
        child.popen = subprocess.Popen(
            child.argv, env=env, start_new_session=True, preexec_fn=_child_preexec(os.getpid())
        )
        child.started = time.monotonic()
        child.restart_at = None
        self.echo(f"diffii up: {child.name} started (pid {child.popen.pid})")
        self.write_state()

    def tick(self) -> None:
        """Notice dead children and restart them when their backoff has passed."""
        now = time.monotonic()
        for child in self.children.values():
            if child.popen is not None and child.restart_at is None and child.popen.poll() is not None:
                child.last_exit = child.popen.returncode
                if now - child.started >= HEALTHY_AFTER:
                    child.backoff = BACKOFF_START
                child.restart_at = now + child.backoff
                child.restarts += 1
                self.echo(
                    f"diffii up: {child.name} exited with {child.last_exit}; "
                    f"restarting in {child.backoff:g}s (restart {child.restarts})"
                )
                child.backoff = min(BACKOFF_MAX, child.backoff * 2)
                self.write_state()
                # Task processes die with their parent, but only eventually: make sure none is left
                # writing before its shards go to another process.
                _signal_group(child.popen, signal.SIGKILL)
                if self.on_exit is not None:
                    try:
                        self.on_exit(child)
                    except Exception as exc:  # the lease still bounds the recovery; keep supervising
                        self.echo(f"diffii up: could not release the shards of {child.name}: {exc}")
            elif child.restart_at is not None and now >= child.restart_at:
                self.start(child)

    def write_state(self) -> None:
        doc = {
            "supervisor_pid": os.getpid(),
            "updated_at": datetime.now(UTC).isoformat(),
            "children": {name: child.state() for name, child in self.children.items()},
        }
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.state_file)  # the API never reads half a file

    def run(self, stop: list[bool]) -> None:
        try:
            for child in self.children.values():
                self.start(child)
            while not stop[0]:
                self.tick()
                time.sleep(0.3)
        finally:
            self.stop_all()
            with contextlib.suppress(FileNotFoundError):
                self.state_file.unlink()

    def stop_all(self, grace: float = 15.0) -> None:
        live = [c.popen for c in self.children.values() if c.popen is not None]
        for popen in live:
            _signal_group(popen, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for popen in live:
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        for popen in live:
            _signal_group(popen, signal.SIGKILL)  # also reaps task processes a killed parent left behind
            popen.wait()


def _signal_group(child: subprocess.Popen[bytes], signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signum)


def read_state(path: Path) -> dict[str, object] | None:
    """The supervisor's last written state, or None when there is none (no supervisor)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
