"""The cohort manifest format (CSV or Parquet) shared by train / evaluate / score / inspect, and its readers.

A manifest row names one case: ``case_id, patient_id, site, study_date, dicom_dir, note_paths, note_dates,
note_types`` (paths relative to the manifest's folder, several notes joined with ";"), plus one 0/1 column per
label the task declares (tumor-risk: ``tumor_present, malignant``). ``records.csv`` (or ``records.parquet``)
beside the manifest holds the tabular record of each case. An empty modality column means that modality is
absent; an absent or empty label cell means "unlabelled"; other columns are ignored (and logged by name).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from mmclinic.case import IMAGING, NOTES, TABULAR, Case, NoteRef, StudyRef
from mmclinic.errors import ConfigError, InputError
from mmclinic.logs import event

log = logging.getLogger(__name__)

INPUT_COLUMNS = (
    "case_id",
    "patient_id",
    "site",
    "study_date",
    "dicom_dir",
    "note_paths",
    "note_dates",
    "note_types",
)
REQUIRED_COLUMNS = ("case_id", "patient_id")
_TRUE = {"1", "1.0", "true", "yes", "y", "t"}
_FALSE = {"0", "0.0", "false", "no", "n", "f"}


@dataclass(frozen=True)
class ManifestRow:
    """One manifest row as read (raw strings; ``row_to_case`` validates)."""

    line: int  # 1-based data row number (header excluded)
    base_dir: Path  # folder relative paths are resolved against
    values: dict[str, str] = field(default_factory=dict)

    def get(self, column: str) -> str:
        """The stripped cell value, or "" when the column is absent or the cell empty."""
        return self.values.get(column, "").strip()

    @property
    def case_id(self) -> str:
        """The row's case id (may be empty on a bad row)."""
        return self.get("case_id")


def _cell(value: Any) -> str:
    """A Parquet / pandas cell as manifest text (missing → "")."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, date):
        return value.isoformat()[:10]
    return str(value)


def _read_table(path: Path, what: str) -> tuple[list[str], list[dict[str, Any]]]:
    """Header and rows of a CSV (cells as strings) or Parquet file (native values)."""
    if not path.is_file():
        raise InputError(f"{what}.not_found", f"{path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".txt"):
            with path.open(newline="", encoding="utf-8-sig") as fh:
                reader = csv.DictReader(fh)
                rows = [dict(r) for r in reader]
                return list(reader.fieldnames or []), rows
        if suffix in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            table = pq.read_table(path)
            return list(table.column_names), table.to_pylist()
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        raise InputError(f"{what}.unreadable", f"{path.name}: {exc}") from exc
    except Exception as exc:  # pyarrow raises its own error types for corrupt files
        raise InputError(f"{what}.unreadable", f"{path.name}: {type(exc).__name__}: {exc}") from exc
    raise InputError(f"{what}.unsupported_format", f"{path.name}: expected .csv or .parquet")


def read_manifest(path: Path | str) -> list[ManifestRow]:
    """All rows of a manifest; raises ``InputError`` only when the file as a whole is unusable."""
    path = Path(path)
    columns, rows = _read_table(path, "manifest")
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise InputError("manifest.missing_column", f"{path.name} lacks column(s) {', '.join(missing)}")
    base = path.resolve().parent
    out = []
    for i, row in enumerate(rows, 1):
        # csv.DictReader puts surplus cells under the key None: such a row is malformed.
        values = {str(k): _cell(v) for k, v in row.items() if k is not None}
        if None in row:
            values["__error__"] = "more cells than header columns"
        elif any(v is None for v in row.values()) and path.suffix.lower() == ".csv":
            values["__error__"] = "fewer cells than header columns"
        out.append(ManifestRow(line=i, base_dir=base, values=values))
    return out


def load_records(path: Path | str) -> dict[str, dict[str, Any]]:
    """Tabular records keyed by ``case_id``; empty cells become ``None``, other CSV cells stay strings."""
    path = Path(path)
    columns, rows = _read_table(path, "records")
    if "case_id" not in columns:
        raise InputError("records.missing_column", f"{path.name} lacks column case_id")
    out: dict[str, dict[str, Any]] = {}
    for i, row in enumerate(rows, 1):
        case_id = _cell(row.get("case_id")).strip()
        if not case_id:
            raise InputError("records.bad_row", f"{path.name} row {i}: empty case_id")
        if case_id in out:
            raise InputError("records.duplicate_case", f"{path.name} row {i}: case_id {case_id} repeated")
        rec = {}
        for k, v in row.items():
            if k is None or k == "case_id":
                continue
            missing = v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, float) and math.isnan(v))
            rec[str(k)] = None if missing else v
        out[case_id] = rec
    return out


def _split(cell: str) -> list[str]:
    return [p.strip() for p in cell.split(";")] if cell else []


def _parse_date(text: str, row: ManifestRow, column: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise InputError("manifest.bad_row", f"row {row.line}: {column} {text!r} is not an ISO date") from exc


def _parse_label(text: str, row: ManifestRow, column: str) -> float:
    low = text.lower()
    if low in _TRUE:
        return 1.0
    if low in _FALSE:
        return 0.0
    raise InputError("manifest.bad_row", f"row {row.line}: {column} {text!r} is not a 0/1 label")


def _resolve(row: ManifestRow, rel: str) -> Path:
    p = Path(rel)
    return (p if p.is_absolute() else row.base_dir / p).resolve()


def _notes(row: ManifestRow) -> list[NoteRef]:
    paths = _split(row.get("note_paths"))
    dates = _split(row.get("note_dates"))
    types = _split(row.get("note_types"))
    for name, values in (("note_dates", dates), ("note_types", types)):
        if values and len(values) != len(paths):
            raise InputError("manifest.bad_row", f"row {row.line}: {len(values)} {name} for {len(paths)} note_paths")
    notes = []
    for k, rel in enumerate(paths):
        if not rel:
            raise InputError("manifest.bad_row", f"row {row.line}: empty entry in note_paths")
        full = _resolve(row, rel)
        if not full.is_file():
            raise InputError("manifest.file_missing", f"row {row.line}: note {rel} not found")
        try:
            data = full.read_bytes()
        except OSError as exc:
            raise InputError("manifest.file_missing", f"row {row.line}: note {rel} unreadable: {exc}") from exc
        note_date = _parse_date(dates[k], row, "note_dates") if dates and dates[k] else None
        note_type = types[k] if types and types[k] else "clinical_note"
        notes.append(NoteRef(data=data, note_date=note_date, note_type=note_type, source=rel))
    return notes


def check_label_columns(labels: Sequence[str]) -> tuple[str, ...]:
    """The task's label names as manifest columns; ConfigError when one is empty or an input column's name."""
    out = tuple(labels)
    clash = sorted(set(out) & set(INPUT_COLUMNS))
    if clash or any(not c.strip() for c in out):
        raise ConfigError("task.bad_labels", f"label names must be non-empty and not input columns: {clash}")
    return out


def row_to_case(row: ManifestRow, records: dict[str, dict[str, Any]] | None = None, *, labels: Sequence[str]) -> Case:
    """Build a ``Case`` from one row (+ its record); ``InputError`` with a manifest.* reason on a bad row.

    ``labels``: the task's label names; each is read from the column of that name (0/1, empty = unknown).
    """
    if "__error__" in row.values:
        raise InputError("manifest.bad_row", f"row {row.line}: {row.values['__error__']}")
    case_id, patient_id = row.case_id, row.get("patient_id")
    if not case_id or not patient_id:
        raise InputError("manifest.bad_row", f"row {row.line}: case_id and patient_id must not be empty")
    if row.get("study_date"):
        _parse_date(row.get("study_date"), row, "study_date")
    inputs: dict[str, Any] = {}
    if dicom_dir := row.get("dicom_dir"):
        folder = _resolve(row, dicom_dir)
        if not folder.is_dir():
            raise InputError("manifest.file_missing", f"row {row.line}: dicom_dir {dicom_dir} not found")
        inputs[IMAGING] = StudyRef(folder=folder)
    if row.get("note_paths"):
        inputs[NOTES] = _notes(row)
    if records is not None and case_id in records:
        inputs[TABULAR] = dict(records[case_id])
    if not inputs:
        raise InputError("manifest.bad_row", f"row {row.line}: case {case_id} has no input modality")
    values = {c: _parse_label(row.get(c), row, c) for c in labels if row.get(c)}
    site = row.get("site") or "default"
    return Case(case_id=case_id, patient_id=patient_id, site=site, inputs=inputs, labels=values)


def default_records_path(manifest_path: Path) -> Path | None:
    """``records.csv`` or ``records.parquet`` beside the manifest, if there is one."""
    for name in ("records.csv", "records.parquet"):
        candidate = manifest_path.parent / name
        if candidate.is_file():
            return candidate
    return None


def iter_cases(
    manifest_path: Path | str, records_path: Path | str | None = None, *, labels: Sequence[str]
) -> Iterator[Case | InputError]:
    """One ``Case`` or ``InputError`` per manifest row, in order: a bad row never stops the others.

    ``labels``: the task's label names (``TaskSpec.labels``), read from the columns of those names; a
    manifest without them is unlabelled. A manifest or records file that is unusable as a whole raises
    ``InputError`` before the first row.
    """
    manifest_path = Path(manifest_path)
    wanted = check_label_columns(labels)
    rows = read_manifest(manifest_path)
    rec_path = Path(records_path) if records_path is not None else default_records_path(manifest_path)
    records = load_records(rec_path) if rec_path is not None else None
    if rows:
        # Column names only (never values): a label column the task does not know is otherwise silent.
        ignored = sorted(set(rows[0].values) - set(INPUT_COLUMNS) - set(wanted) - {"__error__"})
        if ignored:
            event(log, "manifest.columns_ignored", columns=ignored, labels=list(wanted))
    seen: set[str] = set()
    for row in rows:
        try:
            if row.case_id and row.case_id in seen:
                raise InputError("manifest.duplicate_case", f"row {row.line}: case_id {row.case_id} repeated")
            seen.add(row.case_id)
            yield row_to_case(row, records, labels=wanted)
        except InputError as exc:
            yield exc


# ------------------------------------------------------------------------------------------ ground truth


@dataclass(frozen=True)
class LesionTruth:
    """One generated lesion (LPS mm)."""

    center_mm: tuple[float, float, float]
    diameter_mm: float
    margin: str
    density: str


@dataclass(frozen=True)
class CaseTruth:
    """Generator truth of one case."""

    tumor_present: bool
    malignant: bool
    p_malignant: float
    lesions: tuple[LesionTruth, ...]
    # E[p_malignant | what the case shows], the Bayes-optimal score; None in cohorts written before it.
    p_observed: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GroundTruth:
    """``ground_truth.json`` of a synthetic cohort."""

    seed: int
    settings: dict[str, Any]
    # The Bayes-optimal AUROC: of p_observed; of p_malignant in cohorts written before p_observed existed.
    bayes_auroc: float
    oracle_auroc: dict[str, float]
    prevalence: float
    cases: dict[str, CaseTruth]


def read_ground_truth(path: Path | str) -> GroundTruth:
    """Parse ``ground_truth.json``; ``InputError("ground_truth.invalid")`` when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise InputError("ground_truth.not_found", f"{path} does not exist")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        cases = {}
        for case_id, c in doc["cases"].items():
            lesions = tuple(
                LesionTruth(
                    center_mm=(float(le["center_mm"][0]), float(le["center_mm"][1]), float(le["center_mm"][2])),
                    diameter_mm=float(le["diameter_mm"]),
                    margin=str(le["margin"]),
                    density=str(le["density"]),
                )
                for le in c["lesions"]
            )
            known = {"tumor_present", "malignant", "p_malignant", "p_observed", "lesions"}
            cases[str(case_id)] = CaseTruth(
                tumor_present=bool(c["tumor_present"]),
                malignant=bool(c["malignant"]),
                p_malignant=float(c["p_malignant"]),
                lesions=lesions,
                p_observed=float(c["p_observed"]) if c.get("p_observed") is not None else None,
                extra={k: v for k, v in c.items() if k not in known},
            )
        return GroundTruth(
            seed=int(doc["seed"]),
            settings=dict(doc["settings"]),
            bayes_auroc=float(doc.get("bayes_observed_auroc", doc["bayes_auroc"])),
            oracle_auroc={str(k): float(v) for k, v in doc["oracle_auroc"].items()},
            prevalence=float(doc["prevalence"]),
            cases=cases,
        )
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, UnicodeDecodeError) as exc:
        raise InputError("ground_truth.invalid", f"{path.name}: {type(exc).__name__}: {exc}") from exc
