"""Database engines and sessions: SQLite (WAL, foreign keys, BEGIN IMMEDIATE) or PostgreSQL, plus migrations."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from mmclinic.errors import ConfigError

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def _sqlite_setup(engine: Engine, synchronous: str) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from pysqlite so that "begin" below decides how to start.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Almost every transaction writes (an audit event at least). A deferred transaction that
        # reads and then writes fails with SQLITE_BUSY in WAL mode when another writer committed
        # in between; taking the write lock up front makes writers queue on busy_timeout instead.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_db_engine(url: str, sqlite_synchronous: str = "NORMAL", **kwargs: Any) -> Engine:
    """An engine for ``url``; a SQLite file's folder is created; unknown dialects are refused.

    ``sqlite_synchronous``: NORMAL (default) in WAL mode survives a killed process without losing a
    commit and never corrupts the file; only an OS crash or power cut may lose the last commits.
    FULL also fsyncs every commit (about 2x slower per audited request). PostgreSQL is the backend
    for deployments that need more.

    ``hide_parameters``: bound values (note text, pseudonymous ids) never appear in error messages or logs.
    """
    try:
        parsed = make_url(url)
    except Exception as exc:  # sqlalchemy raises ArgumentError with the bad URL in the message
        raise ConfigError("config.database_url", "database URL cannot be parsed") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True, **kwargs
        )
        if sqlite_synchronous not in ("NORMAL", "FULL", "EXTRA"):
            raise ConfigError("config.sqlite_synchronous", "sqlite_synchronous must be NORMAL, FULL or EXTRA")
        _sqlite_setup(engine, sqlite_synchronous)
        return engine
    if backend == "postgresql":
        return create_engine(url, pool_pre_ping=True, hide_parameters=True, **kwargs)
    raise ConfigError("config.database_url", f"unsupported database backend {backend!r} (sqlite or postgresql)")


def is_sqlite(engine: Engine) -> bool:
    """True for the embedded SQLite backend."""
    return engine.dialect.name == "sqlite"


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit (handlers read them to build responses)."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session inside one transaction: committed on success, rolled back on any exception."""
    with factory() as session, session.begin():
        yield session


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision``."""
    from alembic import command

    command.upgrade(_alembic_config(engine), revision)
    log.info("database upgraded to %s", revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Revert migrations down to ``revision``."""
    from alembic import command

    command.downgrade(_alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    """The applied revision, or ``None`` for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    """The newest revision shipped with this version of mmclinic."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(_alembic_config(create_engine("sqlite://"))).get_current_head()
    assert head is not None
    return head


def ping(engine: Engine) -> None:
    """Raise if the database cannot answer a trivial query."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def table_names(engine: Engine) -> list[str]:
    """Tables present (for diagnostics and tests)."""
    return sorted(inspect(engine).get_table_names())
