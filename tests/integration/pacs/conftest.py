"""Fixtures for PACS integration tests with real peers (dcmtk, Orthanc) on free loopback ports."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import _support
import pytest

from mmclinic.pacs.testing import Store, open_store


@pytest.fixture
def require_tool() -> Callable[[str], str]:
    return _support.require_tool  # type: ignore[no-any-return]


@pytest.fixture
def require() -> Callable[[bool, str], None]:
    return _support.require  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def study_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from mmclinic.synth import SynthSettings, generate_cohort

    out = tmp_path_factory.mktemp("synth")
    generate_cohort(SynthSettings(cases=1, seed=11, sites=1, followup_fraction=0.0), out)
    return sorted((out / "cases").glob("*/dicom/*.dcm"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    st = open_store(tmp_path)
    yield st
    st.engine.dispose()
