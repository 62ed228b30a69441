"""The Alembic migrations: upgrade from empty, downgrade to base, and the result equals the models."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from services.common.db import make_engine
from services.common.migrate import current_revision, downgrade_to_base, head_revision, upgrade_to_head
from services.common.models import Base

MODEL_TABLES = set(Base.metadata.tables)


@pytest.fixture(params=["postgres", "sqlite"])
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        make_pg_database: Callable[[], str] = request.getfixturevalue("make_pg_database")
        return make_pg_database()
    return f"sqlite:///{tmp_path / 'state.db'}"


def tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def schema_diff(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def test_upgrade_from_empty_then_downgrade_to_base(empty_database: str) -> None:
    assert tables(empty_database) == set()
    upgrade_to_head(empty_database)
    assert current_revision(empty_database) == head_revision()
    assert tables(empty_database) == MODEL_TABLES | {"alembic_version"}

    downgrade_to_base(empty_database)
    assert current_revision(empty_database) is None
    assert tables(empty_database) == {"alembic_version"}

    upgrade_to_head(empty_database)  # and back up again: downgrade left nothing in the way
    assert tables(empty_database) == MODEL_TABLES | {"alembic_version"}


def test_migrated_schema_matches_the_models(empty_database: str) -> None:
    upgrade_to_head(empty_database)
    assert schema_diff(empty_database) == []


def test_diffii_migrate_command(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from services.cli.server import migrate

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    result = CliRunner().invoke(migrate, ["--url", url])
    assert result.exit_code == 0, result.output
    assert f"database at revision {head_revision()}" in result.output
    assert tables(url) >= MODEL_TABLES
