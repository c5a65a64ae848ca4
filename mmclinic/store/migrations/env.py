"""Alembic environment: runs migrations on the engine handed over by ``mmclinic.store.db``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from mmclinic.store.db import create_db_engine
from mmclinic.store.models import Base

config = context.config
target_metadata = Base.metadata


def _engine() -> Engine:
    engine = config.attributes.get("engine")
    if isinstance(engine, Engine):
        return engine
    # Plain `alembic -c mmclinic/store/migrations/alembic.ini upgrade head` from a checkout.
    from mmclinic.config import get_settings

    return create_db_engine(get_settings().effective_database_url)


def run_migrations_online() -> None:
    """Run every pending migration in one transaction (DDL is transactional on both backends)."""
    with _engine().connect() as connection:
        context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run `mmclinic db upgrade`")
run_migrations_online()
