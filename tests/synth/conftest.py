"""Fixtures of the synth tests: one small written cohort per session, and the dciodvfy tool."""

from __future__ import annotations

import os
import shutil

import pytest
from synth_helpers import SMALL

from mmclinic.synth import SynthResult, generate_cohort


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> SynthResult:
    """A 6-case cohort written once (about a second)."""
    return generate_cohort(SMALL, tmp_path_factory.mktemp("synth") / "cohort", workers=1)


@pytest.fixture(scope="session")
def dciodvfy() -> str:
    """Path of dicom3tools' dciodvfy; skip when missing unless MMCLINIC_REQUIRE_ALL=1."""
    path = shutil.which("dciodvfy")
    if path is None:
        msg = "dciodvfy (Debian package dicom3tools) is not installed"
        if os.environ.get("MMCLINIC_REQUIRE_ALL") == "1":
            pytest.fail(msg + " (MMCLINIC_REQUIRE_ALL=1)")
        pytest.skip(msg)
    return path
