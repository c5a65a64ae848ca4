"""clinical-notes plugin: discovery, load/validation reason codes, windows, fingerprints, collate."""

from __future__ import annotations

import hashlib
from datetime import date

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mmclinic_clinical_notes.config import NotesConfig
from mmclinic_clinical_notes.plugin import ClinicalNotesPlugin
from notes_samples import SENTENCES, long_note
from pydantic import ValidationError

from mmclinic.case import NoteRef
from mmclinic.errors import ConfigError, InputError
from mmclinic.plugin_api import TaskSpec
from mmclinic.registry import Registry


def test_discovered_through_entry_point() -> None:
    reg = Registry.discover({"clinical-notes": {"window_length": 128, "window_stride": 100}})
    plugin = reg.modality_for("notes")
    assert isinstance(plugin, ClinicalNotesPlugin)
    assert plugin.config == NotesConfig(window_length=128, window_stride=100)
    rec = next(r for r in reg.records if r.name == "clinical-notes")
    assert (rec.status, rec.kind, rec.distribution) == ("ok", "modality", "mmclinic-clinical-notes")


def test_bad_config_is_reported_by_registry() -> None:
    reg = Registry.discover({"clinical-notes": {"window_length": 64, "window_stride": 63}})
    rec = next(r for r in reg.records if r.name == "clinical-notes")
    assert rec.status == "error" and "plugin.bad_config" in rec.reason
    with pytest.raises(ValidationError):
        NotesConfig(unknown_option=1)  # type: ignore[call-arg]


def test_long_note_is_windowed_not_truncated(plugin: ClinicalNotesPlugin, spec: TaskSpec) -> None:
    data = long_note()
    item = plugin.load([NoteRef(data, note_date=date(2024, 3, 1), note_type="radiology_report")], spec)
    expected_ids = plugin.tokenizer().encode(data.decode())
    note = item.summary["notes"][0]
    assert note["tokens"] == len(expected_ids) > 300
    assert note["windows"] == item.data["input_ids"].shape[0] > 1
    assert note["note_date"] == "2024-03-01"
    assert item.data["attention_mask"].sum(-1).max() <= 64
    # Every content token is kept by exactly one window, in order: nothing is lost or counted twice.
    kept = item.data["input_ids"][item.data["keep_mask"]].tolist()
    assert kept == expected_ids
    assert item.summary["total_tokens"] == len(expected_ids)


def test_summary_and_fingerprints(plugin: ClinicalNotesPlugin, spec: TaskSpec) -> None:
    a, b = SENTENCES[0].encode(), SENTENCES[1].encode()
    item = plugin.load([NoteRef(a), NoteRef(b, note_type="pathology_report")], spec)
    assert item.fingerprint["note.0"] == hashlib.sha256(a).hexdigest()
    assert item.fingerprint["note.1"] == hashlib.sha256(b).hexdigest()
    swapped = plugin.load([NoteRef(b), NoteRef(a)], spec)
    again = plugin.load([NoteRef(a), NoteRef(b, note_type="pathology_report")], spec)
    assert set(item.fingerprint) == {"note.0", "note.1", "combined"}
    assert again.fingerprint == item.fingerprint
    assert swapped.fingerprint["combined"] != item.fingerprint["combined"]
    assert item.summary["n_notes"] == 2 and [n["windows"] for n in item.summary["notes"]] == [1, 1]
    assert item.data["window_type"].tolist() == [1, 8]  # clinical_note, pathology_report
    assert SENTENCES[0] not in repr(item.summary)  # the summary never carries note text


def test_note_types_match_loosely(plugin: ClinicalNotesPlugin, spec: TaskSpec) -> None:
    types = ["Radiology request", "radiology_request", "RADIOLOGY-REQUEST", "Discharge summary", "memo"]
    item = plugin.load([NoteRef(b"note", note_type=t) for t in types], spec)
    assert item.data["window_type"].tolist() == [6, 6, 6, 9, 0]  # unknown types share the "other" slot


@pytest.mark.parametrize(
    ("notes", "reason"),
    [
        ([NoteRef(b"")], "notes.empty"),
        ([NoteRef(b"ok note"), NoteRef(b"   \n ")], "notes.empty"),
        ([NoteRef("\u200b\u200b".encode())], "notes.empty"),  # only characters the tokenizer drops
        ([NoteRef(b"\xc3\x28 invalid sequence")], "notes.not_utf8"),
        ([NoteRef(b"x " * 40_000)], "notes.too_large"),
        ("just a string", "notes.invalid"),
        ([b"raw bytes, not a NoteRef"], "notes.invalid"),
        ([NoteRef(data="text")], "notes.invalid"),  # type: ignore[arg-type]
    ],
)
def test_rejections(plugin: ClinicalNotesPlugin, spec: TaskSpec, notes: object, reason: str) -> None:
    with pytest.raises(InputError) as exc:
        plugin.load(notes, spec)
    assert exc.value.reason == reason


def test_window_cap_rejects_case(spec: TaskSpec) -> None:
    small = ClinicalNotesPlugin(NotesConfig(unit="window", window_length=64, window_stride=40, max_windows_per_case=3))
    small.load([NoteRef(long_note(4))], spec)
    with pytest.raises(InputError) as exc:
        small.load([NoteRef(long_note(4)), NoteRef(long_note(8))], spec)
    assert exc.value.reason == "notes.too_large"


def test_zero_notes_is_absent_not_an_error(plugin: ClinicalNotesPlugin, spec: TaskSpec) -> None:
    empty = plugin.load([], spec)
    assert empty.summary == {"n_notes": 0, "present": False} and empty.fingerprint == {}
    one = plugin.load([NoteRef(b"short note")], spec)
    batch = plugin.collate([one, empty, None], spec)
    assert batch["present"].tolist() == [True, False, False]
    assert batch["input_ids"].shape == (3, 1, one.data["input_ids"].shape[1])
    assert batch["attention_mask"][1:].sum() == 0 and not batch["keep_mask"][1:].any()


def test_collate_pads_windows_and_tokens(plugin: ClinicalNotesPlugin, spec: TaskSpec, notes: list[NoteRef]) -> None:
    big = plugin.load(notes, spec)
    small = plugin.load([NoteRef(b"cough")], spec)
    batch = plugin.collate([small, big], spec)
    w, t = big.data["input_ids"].shape
    assert batch["input_ids"].shape == (2, w, t) and batch["window_type"].shape == (2, w)
    assert batch["attention_mask"][0].sum() == small.data["attention_mask"].sum()
    assert (batch["input_ids"][1] == big.data["input_ids"]).all()
    assert batch["keep_mask"].dtype.is_floating_point is False


def test_window_longer_than_model_is_a_config_error(spec: TaskSpec) -> None:
    with pytest.raises(ConfigError) as exc:
        ClinicalNotesPlugin(NotesConfig(unit="window", window_length=1024, window_stride=512)).build_encoder(16, spec)
    assert exc.value.reason == "notes.window_too_long"


def test_missing_model_folder_is_a_config_error(tmp_path: object, spec: TaskSpec) -> None:
    with pytest.raises(ConfigError) as exc:
        ClinicalNotesPlugin(NotesConfig(model_path=str(tmp_path))).load([NoteRef(b"note")], spec)
    assert exc.value.reason == "notes.model_not_found"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(blobs=st.lists(st.binary(max_size=300), max_size=3))
def test_arbitrary_bytes_never_crash(plugin: ClinicalNotesPlugin, spec: TaskSpec, blobs: list[bytes]) -> None:
    try:
        item = plugin.load([NoteRef(b) for b in blobs], spec)
    except InputError as exc:
        assert exc.reason in {"notes.empty", "notes.not_utf8", "notes.too_large"}
    else:
        assert item.summary["n_notes"] == len(blobs)
