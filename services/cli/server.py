"""Operator commands: `diffii serve`, `diffii migrate`, `diffii admin ...`.

Heavy imports (FastAPI, uvicorn, Alembic, boto3) happen inside the commands, so `diffii --help`
and `diffii augment` never pay for them.
"""

from __future__ import annotations

import sys

import click

from services.cli.extras import needs_service


@click.command()
@click.option("--host", default=None, help="interface to bind [default: DIFFII_HOST or 127.0.0.1]")
@click.option("--port", type=int, default=None, help="port [default: DIFFII_PORT or 8000]")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True, help="uvicorn processes")
@click.option("--log-level", default="info", show_default=True)
@needs_service
def serve(host: str | None, port: int | None, workers: int, log_level: str) -> None:
    """Run the REST API (uvicorn). Settings come from DIFFII_* environment variables."""
    import uvicorn

    from services.api import http_limits
    from services.api.settings import ApiSettings

    overrides = {k: v for k, v in {"host": host, "port": port}.items() if v is not None}
    settings = ApiSettings(**overrides)
    if settings.uses_embedded_sqlite:
        # The embedded default must work with no setup step: bring the SQLite schema up to date.
        from services.common.migrate import upgrade_to_head

        settings.ensure_home()
        upgrade_to_head(settings.database_url)
    if workers > 1:
        # Each uvicorn process builds its own app from the environment.
        import os

        os.environ["DIFFII_HOST"], os.environ["DIFFII_PORT"] = settings.host, str(settings.port)
        uvicorn.run(
            "services.api.main:app",
            host=settings.host,
            port=settings.port,
            workers=workers,
            log_level=log_level,
            proxy_headers=True,
            **http_limits.uvicorn_options(settings),
        )
        return
    from services.api.app import create_app

    http_limits.configure(http_limits.limits_from(settings))
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        proxy_headers=True,
        **http_limits.uvicorn_options(settings),
    )


@click.command()
@click.option(
    "--url", default=None, help="database URL [default: DIFFII_DATABASE_URL or the embedded SQLite]"
)
@click.option("--revision", default="head", show_default=True, help="target revision")
@needs_service
def migrate(url: str | None, revision: str) -> None:
    """Create or upgrade the state database schema (Alembic)."""
    from alembic import command

    from services.common.migrate import alembic_config, current_revision
    from services.common.settings import CommonSettings

    if url is None:
        settings = CommonSettings()
        settings.ensure_home()
        url = settings.database_url
    command.upgrade(alembic_config(url), revision)
    click.echo(f"database at revision {current_revision(url)}")


@click.group()
@needs_service
def admin() -> None:
    """Operator tasks: API keys, quotas, storage setup, retention."""


@admin.command("create-key")
@click.option("--owner", required=True, help="owner name (created if new); datasets and jobs belong to it")
def create_key_command(owner: str) -> None:
    """Create an API key and print it once (only its sha256 is stored)."""
    from services.common.auth import create_key
    from services.common.db import dispose, make_session_factory, session_scope
    from services.common.settings import CommonSettings

    settings = CommonSettings()
    _require_schema(settings.database_url)
    factory = make_session_factory(settings)
    try:
        with session_scope(factory) as session:
            new = create_key(session, owner)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--owner") from exc
    finally:
        dispose(factory)
    click.echo(f"created key {new.prefix} for owner {new.owner_name!r}; it is shown only now:", err=True)
    click.echo(new.key)


@admin.command("revoke-key")
@click.argument("prefix")
def revoke_key_command(prefix: str) -> None:
    """Revoke the key(s) with this prefix (the part after `dfi_`)."""
    from services.common.auth import revoke_key
    from services.common.db import dispose, make_session_factory, session_scope
    from services.common.settings import CommonSettings

    settings = CommonSettings()
    _require_schema(settings.database_url)
    factory = make_session_factory(settings)
    try:
        with session_scope(factory) as session:
            count = revoke_key(session, prefix)
    finally:
        dispose(factory)
    if not count:
        raise click.ClickException(f"no active key with prefix {prefix!r}")
    click.echo(f"revoked {count} key(s)")


@admin.command("gc")
@click.option("--retention-days", type=float, default=None, help="[default: DIFFII_RETENTION_DAYS or 30]")
@click.option(
    "--intermediate-retention-days",
    type=float,
    default=None,
    help="[default: DIFFII_INTERMEDIATE_RETENTION_DAYS or 1]",
)
@click.option(
    "--dataset-retention-days",
    type=float,
    default=None,
    help="[default: DIFFII_DATASET_RETENTION_DAYS or 30]",
)
@click.option("--dry-run", is_flag=True, help="list what would be removed, remove nothing")
def gc_command(
    retention_days: float | None,
    intermediate_retention_days: float | None,
    dataset_retention_days: float | None,
    dry_run: bool,
) -> None:
    """Remove what ended jobs left in storage: pools, concepts and loose images after the
    intermediate retention, everything (the archive too) after the retention. Job rows stay.
    Uploaded datasets go once no job uses them and the dataset retention has passed since their
    upload and their last job."""
    from datetime import timedelta

    from services.common.db import dispose, make_session_factory
    from services.common.retention import collect
    from services.common.settings import CommonSettings
    from services.common.storage import make_storage

    overrides = {
        k: v
        for k, v in {
            "retention_days": retention_days,
            "intermediate_retention_days": intermediate_retention_days,
            "dataset_retention_days": dataset_retention_days,
        }.items()
        if v is not None
    }
    try:
        settings = CommonSettings(**overrides)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    _require_schema(settings.database_url)
    factory = make_session_factory(settings)
    try:
        report = collect(
            factory,
            make_storage(settings),
            retention=timedelta(days=settings.retention_days),
            intermediate_retention=timedelta(days=settings.intermediate_retention_days),
            dataset_retention=timedelta(days=settings.dataset_retention_days),
            dry_run=dry_run,
        )
    finally:
        dispose(factory)
    verb = "would remove" if dry_run else "removed"
    for job_id in report.expired:
        click.echo(f"{verb} every object of job {job_id}")
    for job_id in report.pruned:
        click.echo(f"{verb} the intermediate objects of job {job_id}")
    for dataset_id in report.datasets:
        click.echo(f"{verb} unused dataset {dataset_id}")
    click.echo(
        f"gc: {len(report.expired)} expired, {len(report.pruned)} pruned, {len(report.datasets)} datasets"
    )


@admin.command("ensure-storage")
def ensure_storage_command() -> None:
    """Create the S3 bucket or the local store folder if missing, then check it is writable."""
    from services.common.settings import CommonSettings
    from services.common.storage import StorageError, make_storage

    settings = CommonSettings()
    storage = make_storage(settings)
    where = f"s3://{settings.s3_bucket}" if settings.storage == "s3" else str(settings.storage_dir)
    try:
        storage.ensure()
        storage.check()
    except StorageError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"storage ready: {where}")


def _require_schema(url: str) -> None:
    from sqlalchemy.exc import SQLAlchemyError

    from services.common.migrate import current_revision, head_revision

    try:
        current = current_revision(url)
    except SQLAlchemyError as exc:
        raise click.ClickException(f"cannot reach the database: {exc}") from exc
    if current != head_revision():
        click.echo(f"database schema is at {current or 'nothing'}; run `diffii migrate` first", err=True)
        sys.exit(1)
