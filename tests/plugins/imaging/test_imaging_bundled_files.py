"""Imaging plugin: every file pydicom ships as test data either loads or raises InputError — nothing else."""

from __future__ import annotations

import warnings
from pathlib import Path

import pydicom
import pytest
from imaging_dicom_factory import SPEC, TEST_FILES, make_plugin, require

from mmclinic.case import StudyRef
from mmclinic.errors import InputError


def _bundled() -> list[Path]:
    # Listed from disk: pydicom's own test-data lookup (get_testdata_files) downloads what is missing and hangs offline.
    return sorted(p for p in TEST_FILES.rglob("*") if p.is_file())


def _permissive_for(path: Path) -> dict[str, object]:
    """Rules that let a single non-CT file through, so decoding and geometry are exercised too."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        modality, sop = str(ds.get("Modality", "")), str(ds.get("SOPClassUID", ""))
    except Exception:
        modality, sop = "", ""
    return {
        "selection": {
            "modalities": [modality],
            "sop_classes": [sop],
            "min_slices": 1,
            "excluded_image_types": [],
            "excluded_descriptions": [],
            "require_axial": False,
            "slice_thickness_mm": (0.001, 1000.0),
        }
    }


@pytest.mark.timeout(300)
def test_every_bundled_file_loads_or_raises_input_error() -> None:
    files = _bundled()
    require(len(files) > 50, "pydicom's bundled test files are missing")
    outcomes: dict[str, dict[str, int]] = {"default": {}, "permissive": {}}
    loaded: list[str] = []
    for path in files:
        for mode in ("default", "permissive"):
            plugin = make_plugin() if mode == "default" else make_plugin(**_permissive_for(path))
            try:
                mi = plugin.load(StudyRef(files=(path,)), SPEC)
            except InputError as exc:
                key = exc.reason
            else:  # anything else propagates and fails the test, naming the file via the traceback
                assert mi.data["image"].shape == (1, *SPEC.imaging.size)
                key = "loaded"
                if mode == "permissive":
                    loaded.append(path.name)
            outcomes[mode][key] = outcomes[mode].get(key, 0) + 1
    print(f"\n{len(files)} bundled files")
    for mode, counts in outcomes.items():
        print(f"  {mode}: " + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    print(f"  loaded with permissive rules: {', '.join(loaded)}")
    assert sum(outcomes["default"].values()) == len(files)
    # Sanity: the default rules accept none of these single images; permissive rules decode a good share.
    assert outcomes["default"].get("loaded", 0) == 0
    assert len(loaded) >= 15
    assert {"CT_small.dcm", "MR_small_RLE.dcm", "693_J2KI.dcm", "rtdose_1frame.dcm"} <= set(loaded)
