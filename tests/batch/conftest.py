"""Batch-scoring fixtures: a fake engine for unit tests; a real synthetic cohort + real model for end-to-end ones."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from mmclinic.batch import ScoreOptions, ScoreSummary, score_cohort

sys.path.insert(0, str(Path(__file__).parent))

N_REAL = 6  # real cases: enough for three batches of two, small enough for 2 shared CPUs


@pytest.fixture(scope="session")
def real_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A labelled synthetic cohort written by the generator (real DICOM, notes, records)."""
    from mmclinic.synth import SynthSettings, generate_cohort

    out = tmp_path_factory.mktemp("cohort")
    generate_cohort(SynthSettings(cases=N_REAL, seed=7, sites=1), out)
    return out / "manifest.csv"


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tumor-risk checkpoint over the installed plugins (random init, fixed seed: numbers are stable)."""
    import torch

    from mmclinic.engine.checkpoint import save_checkpoint
    from mmclinic.engine.factory import model_meta, new_model, task_parts
    from mmclinic.registry import get_registry

    torch.manual_seed(0)
    parts = task_parts(get_registry(), "tumor-risk")
    model = new_model(parts)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_checkpoint(path, model, model_meta(parts, model))
    return path


@pytest.fixture(scope="session")
def real_engine(checkpoint: Path) -> Any:
    """One loaded engine shared by the in-process end-to-end tests (loading the text model is slow)."""
    from mmclinic.engine import InferenceEngine

    return InferenceEngine.load(checkpoint, device="cpu", batch_size=2)


@pytest.fixture(scope="session")
def damaged(real_cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cohort with every DICOM file of case 3 overwritten by garbage (same names, other bytes)."""
    manifest = copy_cohort(real_cohort, tmp_path_factory.mktemp("damaged") / "cohort")
    for f in (manifest.parent / "cases" / "C0003" / "dicom").iterdir():
        f.write_bytes(b"not a dicom file " * 64)
    return manifest


@pytest.fixture(scope="session")
def reference(damaged: Path, real_engine: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ScoreSummary]:
    """An uninterrupted in-process run (batch size 2) that the other runs must reproduce exactly."""
    out = tmp_path_factory.mktemp("ref") / "ref.parquet"
    opts = ScoreOptions(manifest=damaged, out=out, batch_size=2, workers=2, progress=False, n_boot=50)
    return out, score_cohort(opts, engine_factory=lambda: real_engine)


def copy_cohort(manifest: Path, dest: Path) -> Path:
    """A private copy of a cohort (tests that damage files must not touch the shared one)."""
    shutil.copytree(manifest.parent, dest)
    return dest / manifest.name


def require(condition: bool, reason: str) -> None:
    """Skip unless ``condition``; under MMCLINIC_REQUIRE_ALL=1 a missing prerequisite fails instead."""
    if not condition:
        if os.environ.get("MMCLINIC_REQUIRE_ALL") == "1":
            pytest.fail(reason + " (MMCLINIC_REQUIRE_ALL=1)")
        pytest.skip(reason)
