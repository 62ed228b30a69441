"""Send admitted shards to the broker by name: the database decides what reaches the broker.

A ready shard is `pending`; an admission pass (services/common/lifecycle/admission.py) moves the
shards that fair share gives a slot to `queued`, commits, and only then are their messages sent. A
message the broker refuses gives its slot back (the row is `pending` again); if this process dies in
between, the sweeper re-sends the queued row once its message looks lost, so no work is lost.
Duplicate messages are harmless: a worker claims a shard with a conditional update only one can win.

This module never imports the task code: a light Celery app that knows only the broker is enough to
send `diffii.<kind>` by name (the API process stays free of torch and the engine).
"""

from __future__ import annotations

import logging
import threading
from functools import lru_cache
from typing import Any

from celery import Celery
from pydantic import Field
from sqlalchemy.orm import Session

from services.common.lifecycle import admission
from services.common.models import ShardKind
from services.common.settings import CommonSettings
from services.common.timeutil import utcnow

log = logging.getLogger("diffii.dispatch")

TASK_PREFIX = "diffii."
DEFAULT_QUEUE = "diffii"


class DispatchSettings(CommonSettings):
    queue: str = Field(DEFAULT_QUEUE, description="broker queue for shard tasks")
    kind_queues: dict[str, str] = Field(
        default_factory=dict, description='per stage override, e.g. {"generate": "gpu", "package": "cpu"}'
    )

    def queue_for(self, kind: str) -> str:
        return self.kind_queues.get(kind, self.queue)


def broker_app(broker_url: str) -> Celery:
    """A Celery app configured only with the broker; publishing gives up fast when it is down."""
    app = Celery("diffii-dispatch", broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=DEFAULT_QUEUE,
        broker_connection_timeout=3,
        broker_connection_retry_on_startup=False,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
        broker_transport_options=broker_transport_options(broker_url),
    )
    return app


def broker_transport_options(broker_url: str, visibility_timeout: float | None = None) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if broker_url.startswith(("redis://", "rediss://")):
        options.update(socket_connect_timeout=3, socket_timeout=10)
        if visibility_timeout is not None:
            options["visibility_timeout"] = visibility_timeout
    return options


_lock = threading.Lock()
_override: DispatchSettings | None = None


def configure(settings: DispatchSettings | CommonSettings | None) -> None:
    """Use these settings instead of the environment (tests, `diffii up`); None restores the default."""
    global _override
    with _lock:
        _override = None if settings is None else DispatchSettings(**settings.model_dump())


@lru_cache(maxsize=1)
def _env_settings() -> DispatchSettings:
    return DispatchSettings()


@lru_cache(maxsize=4)
def _app_for(broker_url: str) -> Celery:
    return broker_app(broker_url)


def current_settings() -> DispatchSettings:
    return _override or _env_settings()


def capacity(session: Session, settings: DispatchSettings) -> int:
    """Shards that may be queued or running at once: the live workers' task processes (their
    heartbeats in `workers`), or the `worker_slots` setting while none reported, times
    `in_flight_per_slot`."""
    slots = admission.live_slots(session, utcnow(), settings.worker_seen_seconds, settings.worker_slots)
    return slots * settings.in_flight_per_slot


def dispatch(session: Session) -> list[str]:
    """Run an admission pass and send the admitted shards; returns the ids sent.

    Call it whenever a slot may have come free or work arrived (a shard ended, a job was submitted or
    cancelled, the sweeper ticked), after the caller's own transaction committed. Never raises for a
    broker failure: the refused shards are given back and admitted again by a later pass.
    """
    settings = current_settings()
    admitted = admission.admit(
        session, capacity(session, settings), window=settings.fair_share_window_seconds
    )
    sent = send(session, [(a.shard_id, a.kind, a.job_id) for a in admitted], settings)
    refused = [a.shard_id for a in admitted if a.shard_id not in set(sent)]
    if refused:
        admission.give_back(session, refused)
    return sent


def resend(session: Session, rows: list[tuple[str, ShardKind, str]]) -> list[str]:
    """Send queued shards again whose messages look lost (the sweeper); returns the ids sent."""
    sent = send(session, rows, current_settings())
    if sent:
        admission.mark_resent(session, sent)
    return sent


def send(session: Session, rows: list[tuple[str, ShardKind, str]], settings: DispatchSettings) -> list[str]:
    """Publish `diffii.<kind>` for each (shard, kind, job); returns the ids the broker took."""
    session.commit()  # end any read transaction; SQLite would otherwise hold its lock while we publish
    if not rows:
        return []
    sent: list[str] = []
    try:
        app = _app_for(settings.broker_url)
    except Exception as exc:  # a malformed broker URL must not break job creation either
        log.error("broker unusable, shards stay pending: %s", exc, extra={"shard_ids": [r[0] for r in rows]})
        return sent
    for shard_id, kind, job_id in rows:
        kind_name = getattr(kind, "value", str(kind))
        try:
            app.send_task(
                TASK_PREFIX + kind_name, args=[shard_id], queue=settings.queue_for(kind_name), retry=True
            )
        except Exception as exc:
            log.warning(
                "broker refused %s, it will be sent again: %s",
                kind_name,
                exc,
                extra={"job_id": job_id, "shard_id": shard_id},
            )
            continue
        sent.append(shard_id)
    return sent
