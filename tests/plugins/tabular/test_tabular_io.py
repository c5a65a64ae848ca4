"""tabular-records: reading real CSV / TSV / Parquet / JSON / JSON Lines files, and their error codes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest
from mmclinic_tabular_records.plugin import TabularRecordsPlugin
from mmclinic_tabular_records.records_io import parse_json_records, read_records
from tabular_samples import CSV_ROW, JSON_ROW, SPEC, row

from mmclinic.errors import InputError

PLUGIN = TabularRecordsPlugin()
EXPECTED_FP = PLUGIN.load(CSV_ROW, SPEC).fingerprint


def _write_csv(path: Path, rows: list[dict[str, object]], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_csv_round_trip(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "records.csv", [{"case_id": "c1", **CSV_ROW}, {"case_id": "c2", **row(age="400")}])
    records = read_records(path)
    assert list(records) == ["c1", "c2"] and records["c1"] == CSV_ROW  # strings kept, id column removed
    assert PLUGIN.load(records["c1"], SPEC).fingerprint == EXPECTED_FP
    with pytest.raises(InputError) as exc:
        PLUGIN.load(records["c2"], SPEC)
    assert exc.value.reason == "tabular.out_of_range"


def test_tsv_with_bom_and_custom_id_column(tmp_path: Path) -> None:
    path = tmp_path / "records.tsv"
    _write_csv(path, [{"study": "s9", **CSV_ROW}], delimiter="\t")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    records = read_records(path, id_column="study")
    assert PLUGIN.load(records["s9"], SPEC).fingerprint == EXPECTED_FP


def test_parquet_typed_values_with_nulls(tmp_path: Path) -> None:
    rows = [{"case_id": "c1", **JSON_ROW}, {"case_id": "c2", **JSON_ROW, "cea": float("nan"), "copd": None}]
    path = tmp_path / "records.parquet"
    pd.DataFrame(rows).to_parquet(path)
    records = read_records(path)
    assert PLUGIN.load(records["c1"], SPEC).fingerprint == EXPECTED_FP
    second = PLUGIN.load(records["c2"], SPEC)
    assert {"cea", "copd", "crp"} <= set(second.summary["missing"])


def test_json_list_object_and_lines(tmp_path: Path) -> None:
    as_list = tmp_path / "a.json"
    as_list.write_text(json.dumps([{"case_id": "c1", **JSON_ROW}]))
    as_object = tmp_path / "b.json"
    as_object.write_text(json.dumps({"c1": JSON_ROW}))
    lines = tmp_path / "c.jsonl"
    lines.write_text(json.dumps({"case_id": "c1", **JSON_ROW}) + "\n\n")
    for path in (as_list, as_object, lines):
        assert PLUGIN.load(read_records(path)["c1"], SPEC).fingerprint == EXPECTED_FP
    assert parse_json_records(json.dumps({"c1": JSON_ROW}))["c1"] == JSON_ROW


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("no_id.csv", b"age,sex\n63,M\n", "tabular.missing_id"),
        ("blank_id.csv", b"case_id,age\n ,63\n", "tabular.missing_id"),
        ("dup.csv", b"case_id,age\nc1,63\nc1,64\n", "tabular.duplicate_id"),
        ("ragged.csv", b"case_id,age\nc1,63,extra\n", "tabular.invalid"),
        ("latin1.csv", b"case_id,sex\nc1,caf\xe9\n", "tabular.unreadable"),
        ("broken.parquet", b"PAR1 this is not parquet", "tabular.unreadable"),
        ("broken.json", b'[{"case_id": "c1",', "tabular.unreadable"),
        ("scalar.json", b"42", "tabular.invalid"),
        ("items.json", b"[1, 2]", "tabular.invalid"),
        ("values.json", b'{"c1": 5}', "tabular.invalid"),
        ("broken.jsonl", b'{"case_id": "c1"}\n{oops\n', "tabular.unreadable"),
        ("records.xlsx", b"PK\x03\x04", "tabular.unsupported_format"),
    ],
)
def test_file_errors(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as exc:
        read_records(path)
    assert exc.value.reason == reason


def test_missing_file_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(InputError) as exc:
        read_records(tmp_path / "nope.csv")
    assert exc.value.reason == "tabular.unreadable"
