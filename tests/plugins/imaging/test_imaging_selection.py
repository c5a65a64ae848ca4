"""Imaging plugin: declarative series selection — which series wins, and the recorded reason for every other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from imaging_dicom_factory import (
    SPEC,
    SeriesGeometry,
    SeriesOptions,
    folder_ref,
    make_plugin,
    write_ct_series,
)
from mmclinic_imaging_dicom.config import CtDicomConfig
from pydantic import ValidationError
from pydicom.uid import SecondaryCaptureImageStorage

from mmclinic.registry import Registry


def _study(folder: Path) -> None:
    """A realistic study: localizer, 5 mm and 2.5 mm axials, a coronal reformat, a screen capture, a dose report."""
    write_ct_series(
        folder,
        SeriesGeometry(n_slices=2),
        SeriesOptions(series_number=1, description="Topogram 0.6", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
    )
    write_ct_series(folder, SeriesGeometry(n_slices=8, slice_spacing=5.0), SeriesOptions(series_number=2))
    write_ct_series(
        folder,
        SeriesGeometry(n_slices=16, slice_spacing=2.5),
        SeriesOptions(series_number=3, description="CHEST 2.5mm"),
    )
    write_ct_series(
        folder,
        SeriesGeometry(n_slices=10, slice_spacing=3.0, row_dir=(1.0, 0.0, 0.0), col_dir=(0.0, 0.0, -1.0)),
        SeriesOptions(series_number=4, description="COR MPR", image_type=("DERIVED", "PRIMARY", "REFORMATTED")),
    )
    write_ct_series(
        folder,
        SeriesGeometry(n_slices=8),
        SeriesOptions(series_number=5, description="Key images", sop_class=SecondaryCaptureImageStorage),
    )
    write_ct_series(
        folder,
        SeriesGeometry(n_slices=8, slice_spacing=12.0),
        SeriesOptions(series_number=6, description="CHEST 12mm"),
    )
    write_ct_series(folder, SeriesGeometry(n_slices=8), SeriesOptions(series_number=7, description="Dose Report"))


def _by_number(summary: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {s["series_number"]: s for s in summary["series"]}


def _codes(entry: dict[str, Any]) -> list[str]:
    return [r["code"] for r in entry["reasons"]]


def test_every_series_gets_a_recorded_decision(tmp_path: Path) -> None:
    _study(tmp_path)
    mi = make_plugin().load(folder_ref(tmp_path), SPEC)
    s = _by_number(mi.summary)
    assert len(s) == 7
    assert s[2]["status"] == "chosen"  # 5 mm is closest to the task's 5 mm grid
    assert mi.summary["chosen_series"] == s[2]["series_instance_uid"]
    assert s[1]["status"] == "skipped"
    assert "rule.image_type" in _codes(s[1]) and "rule.description" in _codes(s[1])
    assert "rule.min_slices" in _codes(s[1])
    assert s[3]["status"] == "not_preferred" and _codes(s[3]) == ["rank.not_preferred"]
    assert _codes(s[4]) == ["rule.not_axial"]
    assert _codes(s[5]) == ["rule.sop_class"]
    assert _codes(s[6]) == ["rule.slice_thickness"]
    assert _codes(s[7]) == ["rule.description"]
    for entry in s.values():
        assert all(r["detail"] for r in entry["reasons"])


@pytest.mark.parametrize(
    ("prefer", "winner"),
    [("closest_to_target", 2), ("thinnest", 3), ("thickest", 2), ("most_slices", 3)],
)
def test_preference_rules(tmp_path: Path, prefer: str, winner: int) -> None:
    _study(tmp_path)
    mi = make_plugin(selection={"prefer": prefer}).load(folder_ref(tmp_path), SPEC)
    assert _by_number(mi.summary)[winner]["status"] == "chosen"


def test_rules_are_configurable(tmp_path: Path) -> None:
    _study(tmp_path)
    # Allow thick slabs and prefer the thickest: the 12 mm series becomes eligible and wins.
    mi = make_plugin(selection={"slice_thickness_mm": (0.5, 15.0), "prefer": "thickest"}).load(
        folder_ref(tmp_path), SPEC
    )
    assert _by_number(mi.summary)[6]["status"] == "chosen"
    # Demand more slices than the axials have: nothing suitable is left.
    from mmclinic.errors import InputError

    with pytest.raises(InputError) as info:
        make_plugin(selection={"min_slices": 40}).load(folder_ref(tmp_path), SPEC)
    assert info.value.reason == "dicom.no_suitable_series"
    assert "rule.min_slices" in info.value.detail


def test_non_axial_allowed_when_configured(tmp_path: Path) -> None:
    write_ct_series(
        tmp_path,
        SeriesGeometry(n_slices=10, slice_spacing=5.0, row_dir=(1.0, 0.0, 0.0), col_dir=(0.0, 0.0, -1.0)),
    )
    mi = make_plugin(selection={"require_axial": False}).load(folder_ref(tmp_path), SPEC)
    assert mi.data["image"].shape == (1, 64, 64, 32)
    assert np.isfinite(mi.data["image"]).all()


def test_config_validation_and_registry_config(tmp_path: Path) -> None:
    with pytest.raises(ValidationError):
        CtDicomConfig.model_validate({"selection": {"slice_thickness_mm": (5.0, 1.0)}})
    with pytest.raises(ValidationError):
        CtDicomConfig.model_validate({"selection": {"unknown_rule": 1}})
    reg = Registry.discover({"ct-dicom": {"selection": {"min_slices": 3, "prefer": "thinnest"}}})
    plugin = reg.get("modality", "ct-dicom")
    assert isinstance(plugin.config, CtDicomConfig)
    assert plugin.config.selection.min_slices == 3
    bad = Registry.discover({"ct-dicom": {"selection": {"prefer": "random"}}})
    record = next(r for r in bad.records if r.name == "ct-dicom")
    assert record.status == "error" and "plugin.bad_config" in record.reason
