"""Journal semantics (exactly-once keys, final vs retryable failures) and work items (fingerprints, batches)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from fake import FakeEngine, write_manifest

from mmclinic.batch.items import WorkItem, chunks, input_fingerprint, prepare_item, read_items, score_outcomes
from mmclinic.batch.journal import Failure, Journal, Key, journal_path
from mmclinic.case import IMAGING, NOTES, TABULAR, Case, NoteRef, StudyRef
from mmclinic.errors import InputError
from mmclinic.synth import LABEL_COLUMNS as LABELS

W = "a" * 64


def test_commit_is_exactly_once_and_survives_reopen(tmp_path: Path) -> None:
    path = journal_path(tmp_path / "out.parquet")
    assert path.parent == tmp_path and path.name.startswith(".")
    k1, k2 = Key("c1", "fp1", W), Key("c2", "fp2", W)
    with Journal(path) as j:
        assert j.commit_batch([(k1, {"risk": 0.1})], []) == 1
        # The same key again: ignored, the first result stays.
        assert j.commit_batch([(k1, {"risk": 0.9}), (k2, {"risk": 0.2})], []) == 1
    with Journal(path) as j:
        assert j.result(k1) == {"risk": 0.1}
        assert j.count_results() == 2
        assert j.done_keys() == {k1, k2}
        assert j.result(Key("c1", "other-inputs", W)) is None


def test_final_failures_are_done_but_retryable_ones_are_not(tmp_path: Path) -> None:
    final, retry = Key("bad", "fp", W), Key("flaky", "fp", W)
    with Journal(tmp_path / "j.sqlite") as j:
        j.commit_batch(
            [],
            [Failure(final, 1, "imaging.unreadable", "x"), Failure(retry, 2, "batch.prepare_error", "y", final=False)],
        )
        assert j.done_keys() == {final}
        # The retried case now succeeds: its failure disappears, its result counts.
        j.commit_batch([(retry, {"risk": 0.5})], [])
        assert j.failure(retry) is None and j.result(retry) == {"risk": 0.5}
        assert j.failure(final) == Failure(final, 1, "imaging.unreadable", "x", True)


def test_an_unreadable_journal_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(InputError) as exc:
        Journal(path)
    assert exc.value.reason == "batch.journal_unreadable"


def test_a_journal_of_another_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with Journal(path) as j:
        j.set_meta("schema_version", "999")
    with pytest.raises(InputError) as exc:
        Journal(path)
    assert exc.value.reason == "batch.journal_version"


def _study(tmp_path: Path) -> Path:
    folder = tmp_path / "study"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.dcm").write_bytes(b"\x00" * 200)
    (folder / "sub" / "b.dcm").write_bytes(b"\x01" * 200)
    return folder


def test_fingerprint_follows_every_input_byte_and_value(tmp_path: Path) -> None:
    folder = _study(tmp_path)
    note = NoteRef(b"cough for 3 weeks", date(2020, 1, 2), "note")

    def case(rec: dict[str, object], text: bytes = note.data) -> Case:
        n = NoteRef(text, note.note_date, note.note_type)
        return Case("c1", "p1", inputs={IMAGING: StudyRef(folder=folder), NOTES: [n], TABULAR: rec})

    base = input_fingerprint(case({"age": 70}))
    assert base == input_fingerprint(case({"age": 70}))  # stable
    assert base != input_fingerprint(case({"age": 71}))
    assert base != input_fingerprint(case({"age": 70}, b"cough for 4 weeks"))
    (folder / "sub" / "b.dcm").write_bytes(b"\x01" * 199 + b"\x02")  # one byte of one slice
    assert base != input_fingerprint(case({"age": 70}))


def test_fingerprint_of_a_missing_study_folder_is_a_reasoned_failure(tmp_path: Path) -> None:
    case = Case("c1", "p1", inputs={IMAGING: StudyRef(folder=tmp_path / "gone")})
    out = prepare_item(FakeEngine(), WorkItem(0, 1, case), W, frozenset())
    assert out.failure is not None and out.failure.reason == "batch.input_missing" and out.failure.final


def test_batches_are_cut_on_manifest_position() -> None:
    items = [WorkItem(i, i + 1, None, InputError("x")) for i in range(7)]
    assert [[it.index for it in b] for b in chunks(items, 3)] == [[0, 1, 2], [3, 4, 5], [6]]


def test_prepare_skips_done_and_classifies_failures(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path, ["10", "bad", "crash", "20"], extra_rows=[{"case_id": "", "patient_id": "p"}])
    items = read_items(manifest, None, LABELS)
    assert len(items) == 5 and items[4].case is None
    eng = FakeEngine()
    first = prepare_item(eng, items[0], W, frozenset())
    assert first.prepared is not None and first.key.input_fingerprint
    again = prepare_item(eng, items[0], W, frozenset({first.key}))
    assert again.skipped and again.prepared is None
    bad, crash, row = (prepare_item(eng, items[i], W, frozenset()) for i in (1, 2, 4))
    assert bad.failure is not None and (bad.failure.reason, bad.failure.final) == ("tabular.fake_bad", True)
    assert crash.failure is not None and (crash.failure.reason, crash.failure.final) == ("batch.prepare_error", False)
    assert row.failure is not None and row.failure.reason == "manifest.bad_row" and row.key.case_id == "row-5"


def test_a_case_that_breaks_its_batch_fails_alone(tmp_path: Path) -> None:
    items = read_items(write_manifest(tmp_path, ["10", "boom", "30"]), None, LABELS)
    eng = FakeEngine()
    outcomes = [prepare_item(eng, it, W, frozenset()) for it in items]
    results, failures = score_outcomes(eng, outcomes)
    assert [k.case_id for k, _ in results] == ["c00", "c02"]
    assert [(f.key.case_id, f.reason, f.final) for f in failures] == [("c01", "case.fake_boom", True)]
