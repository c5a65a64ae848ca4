"""Shared test helpers: the MMCLINIC_REQUIRE_ALL rule for tests that need external tools (import as `_support`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

REQUIRE_ALL = os.environ.get("MMCLINIC_REQUIRE_ALL") == "1"


def require_tool(name: str) -> str:
    """Path of an external tool; skip when missing, but fail under MMCLINIC_REQUIRE_ALL=1."""
    path = shutil.which(name)
    if path is None:
        msg = f"external tool {name!r} is not installed"
        if REQUIRE_ALL:
            pytest.fail(msg + " (MMCLINIC_REQUIRE_ALL=1)")
        pytest.skip(msg)
    return path


def require(condition: bool, reason: str) -> None:
    """Skip unless ``condition``; under MMCLINIC_REQUIRE_ALL=1 a missing prerequisite fails."""
    if not condition:
        if REQUIRE_ALL:
            pytest.fail(reason + " (MMCLINIC_REQUIRE_ALL=1)")
        pytest.skip(reason)


def enter_test_database(backend: str, tmp_path: Path) -> tuple[Any, str]:
    """Enter an isolated database (``sqlite`` or ``postgresql``); returns (context to exit, URL).

    The PostgreSQL variant needs MMCLINIC_TEST_DATABASE_URL: skipped without it, failed under
    MMCLINIC_REQUIRE_ALL=1.
    """
    from mmclinic.store.testing import PG_ENV, isolated_database

    ctx = isolated_database(backend, tmp_path)
    try:
        url = ctx.__enter__()
    except LookupError:
        require(False, f"PostgreSQL variant: set {PG_ENV} (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
        raise
    return ctx, url


def dciodvfy_errors(tool: str, path: Path) -> list[str]:
    """The ``Error`` lines dicom3tools' dciodvfy prints for one file (warnings are not counted)."""
    out = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60)
    return [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]
