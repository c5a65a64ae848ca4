"""Prerequisite checks for tests that need the first-party plugins installed."""

from __future__ import annotations

import os

import pytest

from mmclinic.registry import get_registry


def require_real_plugins() -> None:
    """Skip without the imaging/notes/tabular/tumor-risk plugins; fail under MMCLINIC_REQUIRE_ALL=1."""
    names = {r.name for r in get_registry().ok()}
    missing = {"ct-dicom", "clinical-notes", "tabular-records", "tumor-risk"} - names
    if missing:
        msg = f"plugins not installed: {', '.join(sorted(missing))}"
        if os.environ.get("MMCLINIC_REQUIRE_ALL") == "1":
            pytest.fail(msg + " (MMCLINIC_REQUIRE_ALL=1)")
        pytest.skip(msg)
