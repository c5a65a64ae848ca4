"""Fixtures for the clinical-notes plugin tests: one plugin / encoder per session (MiniLM is slow on 2 CPUs)."""

from __future__ import annotations

import pytest
from mmclinic_clinical_notes.config import NotesConfig
from mmclinic_clinical_notes.encoder import NotesEncoder
from mmclinic_clinical_notes.plugin import ClinicalNotesPlugin
from notes_samples import SENTENCES, K, long_note, seeded_encoder

from mmclinic.case import NoteRef
from mmclinic.plugin_api import TaskSpec


@pytest.fixture(scope="session")
def spec() -> TaskSpec:
    return TaskSpec(
        name="test-task", required_modalities=(), optional_modalities=("notes",), labels=(), max_text_tokens=K
    )


@pytest.fixture(scope="session")
def config() -> NotesConfig:
    # Short windows keep the tests fast and make a few hundred tokens span several windows.
    return NotesConfig(unit="window", window_length=64, window_stride=40)


@pytest.fixture(scope="session")
def plugin(config: NotesConfig) -> ClinicalNotesPlugin:
    return ClinicalNotesPlugin(config)


@pytest.fixture(scope="session")
def encoder(plugin: ClinicalNotesPlugin, spec: TaskSpec) -> NotesEncoder:
    enc: NotesEncoder = seeded_encoder(plugin, spec)
    return enc


@pytest.fixture(scope="session")
def notes() -> list[NoteRef]:
    return [
        NoteRef(long_note(), note_type="radiology_report"),
        NoteRef(SENTENCES[2].encode(), note_type="progress_note"),
    ]
