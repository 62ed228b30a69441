"""Process commands: `diffii worker`, `diffii sweeper` and `diffii up` (everything on one machine).

`diffii up` runs the API and one worker as child processes on the embedded defaults (SQLite state,
the `sqla+sqlite` broker transport, a local object folder); the recovery sweep runs inside the
worker. Its supervisor (services/cli/supervisor.py) restarts a child that dies, stops every child
on Ctrl-C or SIGTERM, and takes them all down with it if it is killed.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from services.cli.extras import needs_service

if TYPE_CHECKING:
    from services.cli.supervisor import Child

_CLI = "from services.cli.main import main; main()"


def _upgrade_embedded_schema(settings: Any) -> None:
    """The embedded default needs no setup step: bring the SQLite schema up to date."""
    if settings.uses_embedded_sqlite:
        from services.common.migrate import upgrade_to_head

        settings.ensure_home()
        upgrade_to_head(settings.database_url)


@click.command()
@click.option(
    "--concurrency", "-c", type=click.IntRange(1, 64), default=None, help="task processes [default: 1]"
)
@click.option("--queues", "-Q", default=None, help="comma-separated queues to consume [default: diffii]")
@click.option("--pool", default="prefork", show_default=True, help="Celery pool (prefork, solo, threads)")
@click.option("--loglevel", default="info", show_default=True)
@click.option("--sweep/--no-sweep", default=None, help="run the recovery sweep in this worker [default: on]")
@click.option("--hostname", "-n", default=None, help="Celery node name")
@needs_service
def worker(
    concurrency: int | None,
    queues: str | None,
    pool: str,
    loglevel: str,
    sweep: bool | None,
    hostname: str | None,
) -> None:
    """Run a Celery worker (one process per GPU: --concurrency). Settings from DIFFII_* variables."""
    # The Celery app reads WorkerSettings when imported, so options go through the environment.
    if concurrency is not None:
        os.environ["DIFFII_CONCURRENCY"] = str(concurrency)
    if sweep is not None:
        os.environ["DIFFII_SWEEP"] = "true" if sweep else "false"
    from services.worker.celery_app import app, settings

    _upgrade_embedded_schema(settings)
    argv = ["worker", f"--pool={pool}", f"--loglevel={loglevel}", f"--concurrency={settings.concurrency}"]
    argv.append(f"--queues={queues or ','.join(settings.queues)}")
    if hostname:
        argv.append(f"--hostname={hostname}")
    app.worker_main(argv)


@click.command()
@click.option(
    "--interval", type=float, default=None, help="seconds between sweeps [default: DIFFII_SWEEP_SECONDS]"
)
@click.option("--once", is_flag=True, help="sweep once and exit")
@needs_service
def sweeper(interval: float | None, once: bool) -> None:
    """Run the recovery sweep on its own (workers already run it; this is for setups without workers)."""
    import logging

    from services.common.db import make_session_factory
    from services.worker.logs import use_json
    from services.worker.settings import WorkerSettings
    from services.worker.sweeper import sweep

    use_json(level=logging.INFO)
    settings = WorkerSettings()
    _upgrade_embedded_schema(settings)
    sessions = make_session_factory(settings)
    stop = _stop_flag()
    while True:
        try:
            sweep(sessions, resend_after=settings.resend_after_seconds, policy=settings.retry_policy())
        except Exception:
            logging.getLogger("diffii.sweeper").exception("sweep failed")
        if once or _wait(stop, interval or settings.sweep_seconds):
            return


def _stop_flag() -> list[bool]:
    flag = [False]

    def on_signal(signum: int, _frame: Any) -> None:
        flag[0] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return flag


def _wait(flag: list[bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not flag[0]:
        time.sleep(0.2)
    return flag[0]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="API interface")
@click.option("--port", type=int, default=8000, show_default=True, help="API port")
@click.option(
    "--concurrency", type=click.IntRange(1, 64), default=1, show_default=True, help="worker processes"
)
@needs_service
def up(host: str, port: int, concurrency: int) -> None:
    """Run the whole service on this machine (API + worker + recovery sweep) until Ctrl-C.

    Defaults need no server: state in $DIFFII_HOME/diffii.db, the broker in $DIFFII_HOME/broker.db,
    objects under $DIFFII_HOME/objects. DIFFII_DATABASE_URL, DIFFII_BROKER_URL and DIFFII_S3_* choose
    real Postgres, Redis and S3 instead.
    """
    from services.common.migrate import upgrade_to_head
    from services.common.settings import CommonSettings

    settings = CommonSettings()
    settings.ensure_home()
    upgrade_to_head(settings.database_url)  # once, before the children race to do it
    click.echo(f"diffii up: home {settings.home}, API on http://{host}:{port}", err=True)

    from services.cli.supervisor import Supervisor

    state_file = settings.home / "supervisor.json"
    env = {**os.environ, "DIFFII_HOME": str(settings.home), "DIFFII_SUPERVISOR_STATE": str(state_file)}
    commands = {
        "api": [sys.executable, "-c", _CLI, "serve", "--host", host, "--port", str(port)],
        "worker": [sys.executable, "-c", _CLI, "worker", "--concurrency", str(concurrency)],
    }

    def echo(line: str) -> None:
        click.echo(line, err=True)

    Supervisor(commands, env, state_file, echo, on_exit=_releaser(echo)).run(_stop_flag())


def _releaser(echo: Callable[[str], None]) -> Callable[[Child], None]:
    """What `diffii up` does when a child exits: a dead worker's running shards go back to the queue
    now (fenced by worker and attempt), not when their lease runs out."""
    from services.common.db import make_session_factory
    from services.worker.settings import WorkerSettings
    from services.worker.sweeper import release_dead_worker

    settings = WorkerSettings()
    sessions = make_session_factory(settings)

    def on_exit(child: Child) -> None:
        if child.name != "worker":
            return
        cause = f"its worker process died (exit {child.last_exit}); released by diffii up"
        released = release_dead_worker(sessions, child.instance, cause, settings.retry_policy())
        if released:
            echo(f"diffii up: released {len(released)} shard(s) of the dead worker: {', '.join(released)}")

    return on_exit
