"""API fixtures: the real app on a migrated database (SQLite and PostgreSQL), users of two sites, a worker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from api_testkit import Api, build_api


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def api(backend: str, tmp_path: Path) -> Iterator[Api]:
    yield from build_api(backend, tmp_path)
