"""The record schema and sample rows for the tabular-records tests (mirrors the tumor-risk task's columns)."""

from __future__ import annotations

from typing import Any

from mmclinic.plugin_api import FeatureSpec, TaskSpec

SCHEMA: tuple[FeatureSpec, ...] = (
    FeatureSpec("age", "numeric", unit="years", min=0, max=120, required=True),
    FeatureSpec("sex", "categorical", categories=("M", "F"), required=True),
    FeatureSpec("smoking_status", "categorical", categories=("never", "former", "current")),
    FeatureSpec("pack_years", "numeric", unit="pack-years", min=0, max=300),
    FeatureSpec("years_since_quit", "numeric", unit="years", min=0, max=100),
    FeatureSpec("family_history", "boolean"),
    FeatureSpec("copd", "boolean"),
    FeatureSpec("cea", "numeric", unit="ng/mL", min=0, max=10000),
    FeatureSpec("crp", "numeric", unit="mg/L", min=0, max=1000),
    FeatureSpec("hemoglobin", "numeric", unit="g/dL", min=2, max=25),
    FeatureSpec("wbc", "numeric", unit="10^9/L", min=0, max=500),
)
NAMES = [f.name for f in SCHEMA]
SPEC = TaskSpec(
    name="test-task", required_modalities=(), optional_modalities=("tabular",), labels=(), tabular_schema=SCHEMA
)

# As a CSV row arrives: every cell a string, an empty cell is a missing value.
CSV_ROW: dict[str, Any] = {
    "age": "63",
    "sex": "M",
    "smoking_status": "former",
    "pack_years": "40",
    "years_since_quit": "5",
    "family_history": "true",
    "copd": "false",
    "cea": "6.1",
    "cea_unit": "ng/mL",
    "crp": "",
    "crp_unit": "mg/L",
    "hemoglobin": "13.2",
    "hemoglobin_unit": "g/dL",
    "wbc": "7.4",
    "wbc_unit": "10^9/L",
}

# The same record as typed JSON.
JSON_ROW: dict[str, Any] = {
    "age": 63,
    "sex": "M",
    "smoking_status": "former",
    "pack_years": 40.0,
    "years_since_quit": 5,
    "family_history": True,
    "copd": False,
    "cea": 6.1,
    "cea_unit": "ng/mL",
    "crp": None,
    "hemoglobin": 13.2,
    "wbc": 7.4,
}


def row(**changes: Any) -> dict[str, Any]:
    """CSV_ROW with some cells changed."""
    return {**CSV_ROW, **changes}
