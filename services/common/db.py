"""Database engine and sessions.

SQLite (the embedded default) is shared by the API, the worker and the sweeper as separate
processes, so every connection turns on WAL (readers do not block the writer), foreign keys (off by
default in SQLite) and a busy timeout (a writer waits for the lock instead of failing at once).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from services.common.settings import CommonSettings

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_pragmas(foreign_keys: bool) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        _sqlite_on_connect(dbapi_connection, foreign_keys)

    return on_connect


def _sqlite_on_connect(dbapi_connection: Any, foreign_keys: bool) -> None:
    # pysqlite opens transactions lazily on its own; let SQLAlchemy emit BEGIN so that the
    # pragmas below run outside a transaction (journal_mode cannot change inside one).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


def _sqlite_on_begin(conn: Any) -> None:
    # IMMEDIATE takes the write lock at BEGIN, so two processes never both read then fail to
    # upgrade to a write lock (SQLITE_BUSY without waiting for the busy timeout).
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str, *, sqlite_foreign_keys: bool = True, **kwargs: Any) -> Engine:
    """An engine for `url`; SQLite files get the pragmas multi-process access needs.

    Migrations pass sqlite_foreign_keys=False: batch mode rebuilds a table by dropping it, and with
    foreign keys on, SQLite's DROP TABLE would cascade-delete the rows that point at it.
    """
    if _is_sqlite(url):
        sqlite_url = make_url(url)
        if sqlite_url.database and sqlite_url.database != ":memory:":
            Path(sqlite_url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        connect_args = kwargs.pop("connect_args", {})
        connect_args.setdefault("check_same_thread", False)
        connect_args.setdefault("timeout", SQLITE_BUSY_TIMEOUT_MS / 1000)
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas(sqlite_foreign_keys))
        event.listen(engine, "begin", _sqlite_on_begin)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


def make_session_factory(settings: CommonSettings | str | Engine) -> sessionmaker[Session]:
    """A session factory from settings, a URL or an engine; objects stay usable after commit."""
    if isinstance(settings, Engine):
        engine = settings
    elif isinstance(settings, str):
        engine = make_engine(settings)
    else:
        engine = make_engine(settings.database_url)
    return sessionmaker(bind=engine, expire_on_commit=False)


def make_read_session_factory(factory: sessionmaker[Session]) -> sessionmaker[Session]:
    """Sessions for requests that only read, on the same pool: on Postgres in autocommit, so a status
    poll sends its queries and nothing else (no BEGIN, no ROLLBACK on return: two of its six round
    trips). Each statement sees committed data as of its start, exactly what READ COMMITTED gives
    the statements of one transaction. SQLite keeps the transactional factory: its BEGIN IMMEDIATE
    hook (above) has no autocommit counterpart."""
    engine: Engine = factory.kw["bind"]
    if engine.dialect.name == "sqlite":
        return factory
    return sessionmaker(bind=engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)


def dispose(factory: sessionmaker[Session], *, close: bool = True) -> None:
    """Close the pooled connections of a factory's engine. close=False in a forked child: the
    parent's sockets are dropped without sending a goodbye on the parent's behalf."""
    factory.kw["bind"].dispose(close=close)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One transaction: commit on success, roll back on any exception, always close."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
