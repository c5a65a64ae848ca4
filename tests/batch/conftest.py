"""Batch-scoring fixtures: a fake engine for unit tests; a real synthetic cohort + real model for end-to-end ones."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

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


def copy_cohort(manifest: Path, dest: Path) -> Path:
    """A private copy of a cohort (tests that damage files must not touch the shared one)."""
    shutil.copytree(manifest.parent, dest)
    return dest / manifest.name
