"""Read record rows from CSV / Parquet / JSON / JSON Lines files as ``{case_id: raw record}``.

CSV cells stay strings (an empty cell is a missing value); Parquet and JSON keep their types.
Validation happens later, in the plugin's ``load``; these helpers only check file structure.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mmclinic.errors import InputError

Record = dict[str, Any]


def _index(rows: Iterable[Mapping[str, Any]], id_column: str) -> dict[str, Record]:
    out: dict[str, Record] = {}
    for n, row in enumerate(rows, start=1):
        if not isinstance(row, Mapping):
            raise InputError("tabular.invalid", f"row {n}: expected an object, got {type(row).__name__}")
        if None in row:  # csv.DictReader puts surplus cells under the key None
            raise InputError("tabular.invalid", f"row {n}: more values than header columns")
        record = dict(row)
        case_id = record.pop(id_column, None)
        if case_id is None or not str(case_id).strip():
            raise InputError("tabular.missing_id", f"row {n}: no {id_column!r}")
        key = str(case_id).strip()
        if key in out:
            raise InputError("tabular.duplicate_id", f"row {n}: {id_column} repeats an earlier row")
        out[key] = record
    return out


def _read_csv(path: Path, delimiter: str) -> list[dict[str, Any]]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        return list(csv.DictReader(fh, delimiter=delimiter))


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    rows: list[dict[str, Any]] = pq.read_table(path).to_pylist()
    return rows


def parse_json_records(text: str, id_column: str = "case_id") -> dict[str, Record]:
    """Records from JSON text: a list of objects with ``id_column``, or an object ``{case_id: record}``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError("tabular.unreadable", f"invalid JSON at line {exc.lineno}") from None
    if isinstance(data, dict):
        if not all(isinstance(v, dict) for v in data.values()):
            raise InputError("tabular.invalid", "a JSON object must map case ids to record objects")
        return _index(({**v, id_column: k} for k, v in data.items()), id_column)
    if isinstance(data, list):
        return _index(data, id_column)
    raise InputError("tabular.invalid", "JSON records must be a list of objects or an object of objects")


def _read_jsonl(path: Path) -> list[Any]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise InputError("tabular.unreadable", f"line {n}: invalid JSON") from None
    return rows


def read_records(path: Path | str, id_column: str = "case_id") -> dict[str, Record]:
    """Raw records keyed by case id from ``.csv`` / ``.tsv`` / ``.parquet`` / ``.json`` / ``.jsonl`` files."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            return _index(_read_csv(path, "\t" if suffix == ".tsv" else ","), id_column)
        if suffix in (".parquet", ".pq"):
            return _index(_read_parquet(path), id_column)
        if suffix == ".json":
            return parse_json_records(path.read_text(encoding="utf-8"), id_column)
        if suffix in (".jsonl", ".ndjson"):
            return _index(_read_jsonl(path), id_column)
    except InputError:
        raise
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError("tabular.unreadable", f"{path.name}: {type(exc).__name__}") from None
    except Exception as exc:  # pyarrow raises its own error types for corrupt files
        if type(exc).__module__.startswith("pyarrow"):
            raise InputError("tabular.unreadable", f"{path.name}: not a readable Parquet file") from None
        raise
    raise InputError("tabular.unsupported_format", f"{path.name}: use .csv, .tsv, .parquet, .json or .jsonl")
