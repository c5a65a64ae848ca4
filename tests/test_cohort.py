"""The manifest format: good rows become Cases, each bad row becomes one InputError with a stable reason."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmclinic.case import IMAGING, NOTES, TABULAR, Case, StudyRef
from mmclinic.cohort import (
    INPUT_COLUMNS,
    iter_cases,
    load_records,
    read_ground_truth,
    read_manifest,
    row_to_case,
)
from mmclinic.errors import ConfigError, InputError

LABELS = ("tumor_present", "malignant")  # the tumor-risk task's labels
HEADER = ",".join(INPUT_COLUMNS + LABELS)


@pytest.fixture()
def cohort(tmp_path: Path) -> Path:
    """A hand-made cohort folder: two studies, two notes, a records file."""
    for case in ("A", "B"):
        (tmp_path / case / "dicom").mkdir(parents=True)
        (tmp_path / case / "dicom" / "CT1.dcm").write_bytes(b"not parsed here")
    (tmp_path / "A" / "n1.txt").write_bytes(b"Pulmonology consult. Denies hemoptysis.")
    (tmp_path / "A" / "n2.txt").write_bytes("Radiology request \u00e9".encode())
    (tmp_path / "records.csv").write_text(
        "case_id,age,sex,cea,cea_unit\nA,64,F,,ng/mL\nB,70,M,3.1,ng/mL\n", encoding="utf-8"
    )
    return tmp_path


def _manifest(folder: Path, *rows: str, header: str = HEADER) -> Path:
    path = folder / "manifest.csv"
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


GOOD_A = (
    "A,P1,site-1,2020-02-01,A/dicom,A/n1.txt;A/n2.txt,2020-01-10;2020-01-30,Pulmonology consult;Radiology request,1,0"
)
GOOD_B = "B,P2,,2020-03-01,B/dicom,,,,,"


def test_good_rows_become_cases(cohort: Path) -> None:
    out = list(iter_cases(_manifest(cohort, GOOD_A, GOOD_B), labels=LABELS))
    a, b = out
    assert isinstance(a, Case) and isinstance(b, Case)
    assert a.case_id == "A" and a.patient_id == "P1" and a.site == "site-1"
    assert a.inputs[IMAGING] == StudyRef(folder=(cohort / "A" / "dicom").resolve())
    notes = a.inputs[NOTES]
    assert [n.data for n in notes] == [b"Pulmonology consult. Denies hemoptysis.", "Radiology request \u00e9".encode()]
    assert [n.note_date for n in notes] == [date(2020, 1, 10), date(2020, 1, 30)]
    assert [n.note_type for n in notes] == ["Pulmonology consult", "Radiology request"]
    assert notes[0].source == "A/n1.txt"
    assert a.inputs[TABULAR] == {"age": "64", "sex": "F", "cea": None, "cea_unit": "ng/mL"}
    assert "case_id" not in a.inputs[TABULAR]
    assert a.labels == {"tumor_present": 1.0, "malignant": 0.0}
    # B: no notes (empty column → absent), no labels, default site
    assert set(b.inputs) == {IMAGING, TABULAR} and b.labels == {} and b.site == "default"


def test_without_records_file_tabular_is_absent(cohort: Path) -> None:
    (cohort / "records.csv").unlink()
    (case,) = iter_cases(_manifest(cohort, GOOD_A), labels=LABELS)
    assert isinstance(case, Case) and TABULAR not in case.inputs


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("C,P3,,,C/dicom,,,,,", "manifest.file_missing"),
        ("A,P1,,,A/dicom,A/missing.txt,,,,", "manifest.file_missing"),
        ("A,P1,,,A/dicom,A/n1.txt,2020-13-45,,,", "manifest.bad_row"),
        ("A,P1,,,A/dicom,A/n1.txt;A/n2.txt,2020-01-01,,,", "manifest.bad_row"),
        ("A,P1,,,A/dicom,,,,maybe,", "manifest.bad_row"),
        ("A,P1,,yesterday,A/dicom,,,,,", "manifest.bad_row"),
        (",P1,,,A/dicom,,,,,", "manifest.bad_row"),
        ("A,,,,A/dicom,,,,,", "manifest.bad_row"),
        ("A,P1,,,,,,,,", "manifest.bad_row"),
        ("A,P1,,,A/dicom,,,,,,,extra", "manifest.bad_row"),
        ("A,P1,,,A/dicom", "manifest.bad_row"),
    ],
)
def test_bad_row_is_one_input_error_and_others_still_load(cohort: Path, row: str, reason: str) -> None:
    (cohort / "records.csv").write_text("case_id,age\nZ,1\n")  # no record for A: tabular absent
    out = list(iter_cases(_manifest(cohort, GOOD_B, row, GOOD_B.replace("B,P2", "B2,P2")), labels=LABELS))
    assert len(out) == 3
    assert isinstance(out[0], Case) and isinstance(out[2], Case)
    assert isinstance(out[1], InputError) and out[1].reason == reason, out[1]
    assert "row 2" in out[1].detail


def test_duplicate_case_id_is_reported_once(cohort: Path) -> None:
    out = list(iter_cases(_manifest(cohort, GOOD_A, GOOD_A), labels=LABELS))
    assert isinstance(out[0], Case)
    assert isinstance(out[1], InputError) and out[1].reason == "manifest.duplicate_case"


def test_missing_required_column_fails_whole_manifest(cohort: Path) -> None:
    path = _manifest(cohort, "A,A/dicom", header="case_id,dicom_dir")
    with pytest.raises(InputError) as err:
        read_manifest(path)
    assert err.value.reason == "manifest.missing_column" and "patient_id" in err.value.detail


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("nope.csv", None, "manifest.not_found"),
        ("m.xlsx", b"PK\x03\x04", "manifest.unsupported_format"),
        ("m.parquet", b"not parquet at all", "manifest.unreadable"),
        ("m.csv", b"\xff\xfe\x00bad", "manifest.unreadable"),
    ],
)
def test_unusable_manifest_files(tmp_path: Path, name: str, content: bytes | None, reason: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError) as err:
        list(iter_cases(path, labels=LABELS))
    assert err.value.reason == reason


def test_parquet_manifest_and_records(cohort: Path) -> None:
    table = pa.table(
        {
            "case_id": ["A", "B"],
            "patient_id": ["P1", "P2"],
            "dicom_dir": ["A/dicom", "B/dicom"],
            "note_paths": ["A/n1.txt", None],
            "tumor_present": [True, False],
            "malignant": [1, None],
        }
    )
    pq.write_table(table, cohort / "manifest.parquet")
    (cohort / "records.csv").unlink()
    pq.write_table(pa.table({"case_id": ["A"], "age": [64], "cea": [None]}), cohort / "records.parquet")
    a, b = iter_cases(cohort / "manifest.parquet", labels=LABELS)
    assert isinstance(a, Case) and isinstance(b, Case)
    assert a.labels == {"tumor_present": 1.0, "malignant": 1.0} and b.labels == {"tumor_present": 0.0}
    assert a.inputs[TABULAR] == {"age": 64, "cea": None} and TABULAR not in b.inputs
    assert NOTES not in b.inputs


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("id,age\nA,1\n", "records.missing_column"),
        ("case_id,age\nA,1\nA,2\n", "records.duplicate_case"),
        ("case_id,age\n,1\n", "records.bad_row"),
    ],
)
def test_bad_records_file(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "records.csv"
    path.write_text(text)
    with pytest.raises(InputError) as err:
        load_records(path)
    assert err.value.reason == reason


def test_labels_are_the_tasks_columns(cohort: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Another task reads its own label column; columns it does not know are ignored and named in the log."""
    header = ",".join(INPUT_COLUMNS) + ",relapse,malignant,tumor_present"
    path = _manifest(cohort, "B,P2,,,B/dicom,,,,1,1,0", "A,P1,,,A/dicom,,,,,1,", header=header)
    with caplog.at_level("INFO", logger="mmclinic.cohort"):
        b, a = iter_cases(path, labels=("relapse",))
    assert isinstance(a, Case) and isinstance(b, Case)
    assert b.labels == {"relapse": 1.0} and a.labels == {}
    (rec,) = [r for r in caplog.records if getattr(r, "event", "") == "manifest.columns_ignored"]
    assert rec.columns == ["malignant", "tumor_present"] and rec.labels == ["relapse"]
    # The same file read for tumor-risk: the relapse column is the ignored one.
    caplog.clear()
    with caplog.at_level("INFO", logger="mmclinic.cohort"):
        b, a = iter_cases(path, labels=LABELS)
    assert isinstance(a, Case) and isinstance(b, Case)
    assert b.labels == {"tumor_present": 0.0, "malignant": 1.0} and a.labels == {"malignant": 1.0}
    assert [r.columns for r in caplog.records if getattr(r, "event", "") == "manifest.columns_ignored"] == [["relapse"]]
    # A bad cell in a task's label column is that row's error; in an ignored column it is not read.
    path = _manifest(cohort, "B,P2,,,B/dicom,,,,maybe,1,0", header=header)
    (got,) = iter_cases(path, labels=("relapse",))
    assert isinstance(got, InputError) and got.reason == "manifest.bad_row" and "relapse" in got.detail
    (got,) = iter_cases(path, labels=LABELS)
    assert isinstance(got, Case)


@pytest.mark.parametrize("labels", [("dicom_dir",), ("malignant", "case_id"), ("",)])
def test_a_label_named_like_an_input_column_is_refused(cohort: Path, labels: tuple[str, ...]) -> None:
    with pytest.raises(ConfigError) as err:
        list(iter_cases(_manifest(cohort, GOOD_B), labels=labels))
    assert err.value.reason == "task.bad_labels"


def test_row_to_case_is_usable_directly(cohort: Path) -> None:
    (row,) = read_manifest(_manifest(cohort, GOOD_B))
    case = row_to_case(row, None, labels=LABELS)
    assert set(case.inputs) == {IMAGING}


def test_ground_truth_round_trip_and_invalid(tmp_path: Path) -> None:
    doc = {
        "seed": 3,
        "settings": {"cases": 1},
        "bayes_auroc": 0.85,
        "oracle_auroc": {"imaging": 0.7},
        "prevalence": 0.25,
        "cases": {
            "C1": {
                "tumor_present": True,
                "malignant": False,
                "p_malignant": 0.3,
                "lesions": [{"center_mm": [1, 2, 3], "diameter_mm": 9.5, "margin": "smooth", "density": "solid"}],
                "patient_id": "P1",
            }
        },
    }
    path = tmp_path / "ground_truth.json"
    path.write_text(json.dumps(doc))
    gt = read_ground_truth(path)
    assert gt.seed == 3 and gt.oracle_auroc == {"imaging": 0.7}
    lesion = gt.cases["C1"].lesions[0]
    assert lesion.center_mm == (1.0, 2.0, 3.0) and lesion.diameter_mm == 9.5
    assert gt.cases["C1"].extra == {"patient_id": "P1"}
    del doc["cases"]["C1"]["lesions"][0]["margin"]
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError) as err:
        read_ground_truth(path)
    assert err.value.reason == "ground_truth.invalid"
    path.write_text("{not json")
    with pytest.raises(InputError):
        read_ground_truth(path)
