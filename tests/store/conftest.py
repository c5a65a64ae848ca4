"""Store fixtures: every test that uses ``db`` runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from _support import enter_test_database
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from mmclinic.store import db as dbmod


@dataclass
class Db:
    url: str
    engine: Engine
    factory: sessionmaker[Session]
    backend: str


def open_backend(backend: str, tmp_path: Path, revision: str | None = "head") -> Iterator[Db]:
    ctx, url = enter_test_database(backend, tmp_path)
    engine = dbmod.create_db_engine(url)
    try:
        if revision:
            dbmod.upgrade(engine, revision)
        yield Db(url, engine, dbmod.session_factory(engine), backend)
    finally:
        engine.dispose()
        ctx.__exit__(None, None, None)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db(backend: str, tmp_path: Path) -> Iterator[Db]:
    yield from open_backend(backend, tmp_path)


@pytest.fixture
def empty_db(backend: str, tmp_path: Path) -> Iterator[Db]:
    yield from open_backend(backend, tmp_path, revision=None)


@pytest.fixture
def submit(db: Db):
    """Submit a notes + tabular case; returns the SubmitResult."""
    from mmclinic.store.cases import CaseInput, NoteInput
    from mmclinic.store.cases import submit as do_submit

    def _submit(
        note: str = "ct chest follow-up",
        site: str = "s1",
        patient: str = "p1",
        value: float = 1.0,
        model: str = "tumor-risk",
        max_attempts: int = 3,
    ):
        with dbmod.transaction(db.factory) as s:
            return do_submit(
                s,
                CaseInput(patient_id=patient, site=site, notes=(NoteInput(note.encode()),), tabular={"age": value}),
                model=model,
                max_attempts=max_attempts,
            )

    return _submit
