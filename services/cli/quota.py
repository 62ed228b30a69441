"""`diffii admin quota set|show OWNER`: per-owner overrides of the quota settings."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

RESET = "default"


def _limit(kind: Callable[[str], float]) -> Callable[[str | None], float | str | None]:
    def parse(text: str | None) -> float | str | None:
        if text is None or text == RESET:
            return text
        try:
            value = kind(text)
        except ValueError:
            raise click.BadParameter(
                f"{text!r} is not a number (or {RESET!r} to drop the override)"
            ) from None
        if value <= 0:
            raise click.BadParameter(f"{text!r} must be above 0")
        return value

    return parse


def _options(f: Any) -> Any:
    hint = f"; {RESET!r} drops the override"
    for name, kind, what in (
        ("max-stored-bytes", int, "bytes of datasets and archives"),
        ("max-job-cost", float, "work one job may ask for (512-pixel model passes)"),
        ("max-active-jobs", int, "jobs queued or running"),
    ):
        f = click.option(f"--{name}", callback=lambda _c, _p, v, k=kind: _limit(k)(v), help=what + hint)(f)
    return f


@click.group("quota")
def quota() -> None:
    """Per-owner limits: overrides of DIFFII_MAX_ACTIVE_JOBS, _MAX_JOB_COST, _MAX_STORED_BYTES."""


def _owner_id(session: Any, name: str) -> str:
    from sqlalchemy import select

    from services.common.models import Owner

    owner_id = session.scalar(select(Owner.id).where(Owner.name == name))
    if owner_id is None:
        raise click.ClickException(f"no owner named {name!r} (`diffii admin create-key --owner` makes one)")
    return owner_id


def _with_session(run: Callable[[Any, Any], None]) -> None:
    from services.cli.server import _require_schema
    from services.common.db import dispose, make_session_factory
    from services.common.settings import CommonSettings

    settings = CommonSettings()
    _require_schema(settings.database_url)
    factory = make_session_factory(settings)
    try:
        with factory() as session:
            run(session, settings)
    finally:
        dispose(factory)


def _show(session: Any, settings: Any, owner: str) -> None:
    from services.common import quotas
    from services.common.models import OwnerQuota

    owner_id = _owner_id(session, owner)
    row = session.get(OwnerQuota, owner_id)
    limits = quotas.limits(session, owner_id, settings.default_limits())
    usage = {
        "max_active_jobs": quotas.active_jobs(session, owner_id),
        "max_job_cost": None,
        "max_stored_bytes": quotas.stored_bytes(session, owner_id),
    }
    click.echo(f"owner {owner!r}")
    for name in quotas.QUOTA_FIELDS:
        source = "override" if row is not None and getattr(row, name) is not None else "default"
        used = "" if usage[name] is None else f"  (in use: {usage[name]})"
        click.echo(f"  {name} = {getattr(limits, name):g} [{source}]{used}")


@quota.command("show")
@click.argument("owner")
def show(owner: str) -> None:
    """The owner's limits, whether each is an override or the default, and what is in use."""
    _with_session(lambda session, settings: _show(session, settings, owner))


@quota.command("set")
@click.argument("owner")
@_options
def set_(owner: str, **values: float | str | None) -> None:
    """Override the owner's limits (only the options given change)."""
    from services.common import quotas

    given = {k: (None if v == RESET else v) for k, v in values.items() if v is not None}
    if not given:
        raise click.UsageError("give at least one of --max-active-jobs, --max-job-cost, --max-stored-bytes")

    def run(session: Any, settings: Any) -> None:
        quotas.set_overrides(session, _owner_id(session, owner), **given)
        _show(session, settings, owner)

    _with_session(run)
