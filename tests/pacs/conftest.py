"""PACS unit-test fixtures: one synthetic cohort per session, a fresh store per test, the external-tool rule."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import _support
import pytest

from mmclinic.pacs.testing import Store, open_store


@pytest.fixture
def require_tool() -> Callable[[str], str]:
    """``tests/conftest.py``'s rule: skip when a tool is missing, fail under MMCLINIC_REQUIRE_ALL=1."""
    return _support.require_tool  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def synth_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mmclinic.synth import SynthSettings, generate_cohort

    out = tmp_path_factory.mktemp("synth")
    generate_cohort(SynthSettings(cases=2, seed=7, sites=1, followup_fraction=0.0), out)
    return out


@pytest.fixture(scope="session")
def study_dirs(synth_cohort: Path) -> list[Path]:
    return sorted(p for p in (synth_cohort / "cases").glob("*/dicom") if p.is_dir())


@pytest.fixture(scope="session")
def study_files(study_dirs: list[Path]) -> list[Path]:
    return sorted(study_dirs[0].glob("*.dcm"))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    st = open_store(tmp_path)
    yield st
    st.engine.dispose()
