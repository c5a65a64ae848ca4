"""Shared test helpers: the MMCLINIC_REQUIRE_ALL rule for tests that need external tools (import as `_support`)."""

from __future__ import annotations

import os
import shutil

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
