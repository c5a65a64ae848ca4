"""PACS unit-test fixtures: one synthetic cohort per session, a fresh store per test, the external-tool rule."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mmclinic.pacs.testing import Store, open_store


def _root_conftest() -> Any:
    # Loaded by path: a bare "import conftest" would be ambiguous between the suite's conftest files.
    spec = importlib.util.spec_from_file_location("_mmclinic_root_conftest", Path(__file__).parents[1] / "conftest.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ROOT = _root_conftest()


@pytest.fixture
def require_tool() -> Callable[[str], str]:
    """``tests/conftest.py``'s rule: skip when a tool is missing, fail under MMCLINIC_REQUIRE_ALL=1."""
    return ROOT.require_tool  # type: ignore[no-any-return]


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
