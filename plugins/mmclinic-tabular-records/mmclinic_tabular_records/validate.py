"""Record validation against the task's feature schema: typed canonical values, or reasons per field."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mmclinic.plugin_api import FeatureSpec

Value = float | bool | str | None

UNIT_SUFFIX = "_unit"
_NUMBER_RE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
_TRUE = frozenset({"true", "t", "yes", "y", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "0"})


class _Reject(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class FieldIssue:
    """Why one field (or column) was rejected. ``detail`` never echoes free text from the record."""

    field: str
    reason: str  # e.g. tabular.out_of_range
    detail: str


@dataclass
class RecordReport:
    """Outcome of validating one record: canonical values (None = missing) in schema order, and the issues."""

    values: dict[str, Value]
    valid: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    rejected: list[FieldIssue] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # unknown columns dropped by configuration

    def summary(self) -> dict[str, Any]:
        """JSON-ready summary (what ``mmclinic inspect`` prints)."""
        return {
            "valid": list(self.valid),
            "missing": list(self.missing),
            "rejected": [{"field": i.field, "reason": i.reason, "detail": i.detail} for i in self.rejected],
            "ignored": list(self.ignored),
        }


def _plain(value: Any) -> Any:
    # numpy / pandas scalars (from Parquet or DataFrames) become Python values; NA markers become None.
    if type(value).__name__ in ("NAType", "NaTType"):
        return None
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        return value.item()
    return value


def is_missing(value: Any) -> bool:
    """None, an empty / blank string (an empty CSV cell), NaN or a pandas NA marker."""
    value = _plain(value)
    if value is None:
        return True
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, float) and math.isnan(value)


def _numeric(spec: FeatureSpec, value: Any) -> float:
    if isinstance(value, bool):
        raise _Reject("tabular.wrong_type", "expected a number, got a boolean")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if not _NUMBER_RE.match(text):
            raise _Reject("tabular.wrong_type", "expected a number, got text")
        number = float(text)
    else:
        raise _Reject("tabular.wrong_type", f"expected a number, got {type(value).__name__}")
    if not math.isfinite(number):
        raise _Reject("tabular.wrong_type", "expected a finite number")
    if (spec.min is not None and number < spec.min) or (spec.max is not None and number > spec.max):
        raise _Reject("tabular.out_of_range", f"{number:g} outside [{spec.min}, {spec.max}]")
    return number


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _Reject("tabular.wrong_type", "expected true/false")


def _categorical(spec: FeatureSpec, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise _Reject("tabular.wrong_type", f"expected a category, got {type(value).__name__}")
    text = value.strip()
    if text in spec.categories:
        return text
    # Case-insensitive match only when it is unambiguous ("m" -> "M", "Former" -> "former").
    folded = [c for c in spec.categories if c.casefold() == text.casefold()]
    if len(folded) == 1:
        return folded[0]
    raise _Reject("tabular.bad_category", f"not one of {', '.join(spec.categories)}")


def _parse(spec: FeatureSpec, value: Any) -> Value:
    if spec.type == "numeric":
        return _numeric(spec, value)
    if spec.type == "boolean":
        return _boolean(value)
    return _categorical(spec, value)


def validate_record(
    record: Mapping[str, Any], schema: Sequence[FeatureSpec], *, ignore_unknown_columns: bool = False
) -> RecordReport:
    """Validate every field; collects all issues (unknown columns first, then schema order) instead of stopping."""
    by_name = {f.name: f for f in schema}
    report = RecordReport(values={})
    for column in sorted(str(c) for c in record):
        base = column[: -len(UNIT_SUFFIX)] if column.endswith(UNIT_SUFFIX) else None
        if column in by_name or (base is not None and base in by_name):
            continue
        if ignore_unknown_columns:
            report.ignored.append(column)
        else:
            report.rejected.append(FieldIssue(column, "tabular.unknown_column", "not in the task's schema"))
    for spec in schema:
        raw = _plain(record.get(spec.name))
        unit = _plain(record.get(spec.name + UNIT_SUFFIX))
        try:
            if not is_missing(unit) and (not isinstance(unit, str) or unit.strip() != (spec.unit or "")):
                expected = spec.unit if spec.unit else "no unit"
                raise _Reject("tabular.unit_mismatch", f"unit must be {expected}")
            if is_missing(raw):
                if spec.required:
                    raise _Reject("tabular.missing_required", "required value is missing")
                report.values[spec.name] = None
                report.missing.append(spec.name)
                continue
            report.values[spec.name] = _parse(spec, raw)
            report.valid.append(spec.name)
        except _Reject as rej:
            report.values[spec.name] = None
            report.rejected.append(FieldIssue(spec.name, rej.reason, rej.detail))
    return report
