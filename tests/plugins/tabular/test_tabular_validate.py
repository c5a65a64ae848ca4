"""tabular-records: validation reason codes, canonical values, fingerprints, summary, registry discovery."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mmclinic_tabular_records.config import TabularConfig
from mmclinic_tabular_records.plugin import TabularRecordsPlugin
from tabular_samples import CSV_ROW, JSON_ROW, NAMES, SPEC, row

from mmclinic.errors import InputError
from mmclinic.registry import Registry

PLUGIN = TabularRecordsPlugin()


def test_discovered_through_entry_point() -> None:
    reg = Registry.discover({"tabular-records": {"ignore_unknown_columns": True}})
    plugin = reg.modality_for("tabular")
    assert isinstance(plugin, TabularRecordsPlugin)
    assert plugin.config == TabularConfig(ignore_unknown_columns=True)


def test_csv_strings_become_typed_values() -> None:
    item = PLUGIN.load(CSV_ROW, SPEC)
    values = item.meta["values"]
    assert values == {
        "age": 63.0, "sex": "M", "smoking_status": "former", "pack_years": 40.0, "years_since_quit": 5.0,
        "family_history": True, "copd": False, "cea": 6.1, "crp": None, "hemoglobin": 13.2, "wbc": 7.4,
    }  # fmt: skip
    assert item.summary["missing"] == ["crp"] and item.summary["rejected"] == []
    assert item.summary["valid"] == [n for n in NAMES if n != "crp"]
    assert item.data["missing"].tolist() == [n == "crp" for n in NAMES]
    assert item.data["cat"][NAMES.index("smoking_status")] == 1 and item.data["cat"][NAMES.index("family_history")] == 1


def test_fingerprint_is_of_validated_values() -> None:
    csv_fp = PLUGIN.load(CSV_ROW, SPEC).fingerprint
    assert set(csv_fp) == {"record"} and len(csv_fp["record"]) == 64
    # The same facts as typed JSON (and with loose spellings) give the same fingerprint ...
    assert PLUGIN.load(JSON_ROW, SPEC).fingerprint == csv_fp
    assert PLUGIN.load(row(sex=" m ", family_history="YES", age="63.0"), SPEC).fingerprint == csv_fp
    # ... and any changed value a different one.
    assert PLUGIN.load(row(cea="6.2"), SPEC).fingerprint != csv_fp
    assert PLUGIN.load(row(copd=""), SPEC).fingerprint != csv_fp


@pytest.mark.parametrize(
    ("changes", "reason", "field"),
    [
        ({"favourite_colour": "blue"}, "tabular.unknown_column", "favourite_colour"),
        ({"glucose_unit": "mmol/L"}, "tabular.unknown_column", "glucose_unit"),
        ({"age": "sixty"}, "tabular.wrong_type", "age"),
        ({"age": True}, "tabular.wrong_type", "age"),
        ({"age": "nan"}, "tabular.wrong_type", "age"),
        ({"age": "1_000"}, "tabular.wrong_type", "age"),
        ({"cea": [1, 2]}, "tabular.wrong_type", "cea"),
        ({"copd": "maybe"}, "tabular.wrong_type", "copd"),
        ({"copd": 2}, "tabular.wrong_type", "copd"),
        ({"smoking_status": 1.5}, "tabular.wrong_type", "smoking_status"),
        ({"age": "400"}, "tabular.out_of_range", "age"),
        ({"age": 400}, "tabular.out_of_range", "age"),
        ({"pack_years": "-3"}, "tabular.out_of_range", "pack_years"),
        ({"hemoglobin": "1.5"}, "tabular.out_of_range", "hemoglobin"),
        ({"cea_unit": "mg/dL"}, "tabular.unit_mismatch", "cea"),
        ({"hemoglobin_unit": "g/L"}, "tabular.unit_mismatch", "hemoglobin"),
        ({"sex_unit": "kg"}, "tabular.unit_mismatch", "sex"),
        ({"age": ""}, "tabular.missing_required", "age"),
        ({"age": None}, "tabular.missing_required", "age"),
        ({"age": float("nan")}, "tabular.missing_required", "age"),
        ({"smoking_status": "sometimes"}, "tabular.bad_category", "smoking_status"),
        ({"sex": "X"}, "tabular.bad_category", "sex"),
    ],
)
def test_rejections(changes: dict[str, object], reason: str, field: str) -> None:
    with pytest.raises(InputError) as exc:
        PLUGIN.load(row(**changes), SPEC)
    assert exc.value.reason == reason
    assert exc.value.detail.startswith(f"{field}: {reason}")
    report = PLUGIN.validate(row(**changes), SPEC)
    assert [(i.field, i.reason) for i in report.rejected] == [(field, reason)]


def test_missing_required_when_column_absent() -> None:
    record = dict(CSV_ROW)
    del record["sex"]
    with pytest.raises(InputError) as exc:
        PLUGIN.load(record, SPEC)
    assert exc.value.reason == "tabular.missing_required"


def test_all_issues_reported_and_no_free_text_echoed() -> None:
    with pytest.raises(InputError) as exc:
        PLUGIN.load(row(age="John Smith", pack_years="-1", hospital_number="123456"), SPEC)
    assert exc.value.reason == "tabular.unknown_column"  # unknown columns come first
    for part in (
        "hospital_number: tabular.unknown_column",
        "age: tabular.wrong_type",
        "pack_years: tabular.out_of_range",
    ):
        assert part in exc.value.detail
    assert "John" not in exc.value.detail and "123456" not in exc.value.detail


def test_ignore_unknown_columns() -> None:
    plugin = TabularRecordsPlugin(TabularConfig(ignore_unknown_columns=True))
    item = plugin.load(row(patient_name="x", site="a"), SPEC)
    assert item.summary["ignored"] == ["patient_name", "site"]
    assert item.fingerprint == PLUGIN.load(CSV_ROW, SPEC).fingerprint


def test_mark_missing_mode_lists_rejected_optional_fields() -> None:
    plugin = TabularRecordsPlugin(TabularConfig(invalid_optional="mark_missing"))
    item = plugin.load(row(cea="-5", copd="maybe"), SPEC)
    assert item.summary["rejected"] == [
        {"field": "copd", "reason": "tabular.wrong_type", "detail": "expected true/false"},
        {"field": "cea", "reason": "tabular.out_of_range", "detail": "-5 outside [0, 10000]"},
    ]
    assert item.meta["values"]["cea"] is None and item.data["missing"][NAMES.index("cea")]
    with pytest.raises(InputError) as exc:  # a required field is never dropped silently
        plugin.load(row(age="400"), SPEC)
    assert exc.value.reason == "tabular.out_of_range"


def test_absent_and_non_record_inputs() -> None:
    assert PLUGIN.load(None, SPEC).summary == {"present": False}
    with pytest.raises(InputError) as exc:
        PLUGIN.load(["age", 63], SPEC)
    assert exc.value.reason == "tabular.invalid"


def test_numpy_and_pandas_scalars() -> None:
    import numpy as np
    import pandas as pd

    typed = {**JSON_ROW, "age": np.int64(63), "pack_years": np.float64(40), "copd": np.bool_(False), "crp": pd.NA}
    assert PLUGIN.load(typed, SPEC).fingerprint == PLUGIN.load(JSON_ROW, SPEC).fingerprint


_values = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.lists(st.integers(), max_size=2), st.binary(max_size=4),
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    changes=st.dictionaries(st.sampled_from([*NAMES, "cea_unit", "wbc_unit", "other"]), _values, max_size=5),
    ignore=st.booleans(),
)
def test_arbitrary_values_give_input_error_or_valid_record(changes: dict[str, object], ignore: bool) -> None:
    plugin = TabularRecordsPlugin(TabularConfig(ignore_unknown_columns=ignore))
    try:
        item = plugin.load(row(**changes), SPEC)
    except InputError as exc:
        assert exc.reason.startswith("tabular.")
    else:
        assert all(v is None or not isinstance(v, float) or math.isfinite(v) for v in item.meta["values"].values())
