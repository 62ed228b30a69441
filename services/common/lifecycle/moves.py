"""Shard transitions by condition: the one step that both job and shard transitions take, kept apart so
that `jobs` (closing an ended job's shards) and `shards` need not import each other."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import ColumnElement, update
from sqlalchemy.orm import Session

from services.common.lifecycle.table import SHARD_TRANSITIONS, Actor, lookup
from services.common.models import Shard, ShardStatus


def move_where(
    session: Session,
    where: Iterable[ColumnElement[bool]],
    event: str,
    actor: Actor,
    target: ShardStatus | None = None,
    **values: Any,
) -> int:
    """Apply a transition of the table to the shards matching `where` and the event's source states."""
    sources, to = lookup(SHARD_TRANSITIONS, event, actor, target)
    result = session.execute(
        update(Shard)
        .where(*where, Shard.status.in_(sources))
        .values(status=to, **values)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount  # type: ignore[attr-defined]
