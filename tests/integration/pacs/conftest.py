"""Fixtures for PACS integration tests with real peers (dcmtk, Orthanc) on free loopback ports."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mmclinic.pacs.testing import Store, open_store


def _root_conftest() -> Any:
    # Loaded by path: a bare "import conftest" would be ambiguous between the suite's conftest files.
    spec = importlib.util.spec_from_file_location("_mmclinic_root_conftest", Path(__file__).parents[2] / "conftest.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ROOT = _root_conftest()


@pytest.fixture
def require_tool() -> Callable[[str], str]:
    return ROOT.require_tool  # type: ignore[no-any-return]


@pytest.fixture
def require() -> Callable[[bool, str], None]:
    return ROOT.require  # type: ignore[no-any-return]


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
