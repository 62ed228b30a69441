"""Send shard tasks to the broker by name, after their rows are committed.

The database is the source of truth: a row is `pending` once committed and becomes `queued` when the
broker accepted its message. If the broker is down or this process dies in between, the row stays
`pending` and the worker-side sweeper re-sends it, so no work is lost. Duplicate messages are harmless:
a worker claims a shard with a conditional update that only one can win.

This module never imports the task code: a light Celery app that knows only the broker is enough to
send `diffii.<kind>` by name (the API process stays free of torch and the engine).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from functools import lru_cache
from typing import Any

from celery import Celery
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.common.lifecycle import shards as lifecycle
from services.common.lifecycle.table import SENDABLE_SHARD
from services.common.models import Shard
from services.common.settings import CommonSettings

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


def dispatch(session: Session, shard_ids: Iterable[str]) -> list[str]:
    """Send each committed pending/queued shard to the broker and mark it queued.

    Returns the ids that were sent. Never raises for a broker failure: the rows stay `pending`.
    Call it only after the transaction that created or reset the rows has committed.
    """
    ids = list(dict.fromkeys(shard_ids))
    if not ids:
        return []
    settings = current_settings()
    rows = session.execute(
        select(Shard.id, Shard.kind, Shard.job_id).where(Shard.id.in_(ids), Shard.status.in_(SENDABLE_SHARD))
    ).all()
    session.commit()  # end the read transaction; SQLite would otherwise hold its lock while we publish
    sent: list[str] = []
    try:
        app = _app_for(settings.broker_url)
    except Exception as exc:  # a malformed broker URL must not break job creation either
        log.error("broker unusable, shards stay pending: %s", exc, extra={"shard_ids": ids})
        return sent
    for shard_id, kind, job_id in rows:
        kind_name = getattr(kind, "value", str(kind))
        try:
            app.send_task(
                TASK_PREFIX + kind_name, args=[shard_id], queue=settings.queue_for(kind_name), retry=True
            )
        except Exception as exc:
            log.warning(
                "broker refused %s, the sweeper will re-send it: %s",
                kind_name,
                exc,
                extra={"job_id": job_id, "shard_id": shard_id},
            )
            continue
        sent.append(shard_id)
    if sent:
        lifecycle.mark_sent(session, sent)  # only rows still sendable: a fast worker may have one already
        session.commit()
    return sent
