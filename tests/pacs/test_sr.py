"""SR builder: TID 1500 content, zero-findings SR, deterministic identity, dciodvfy with zero errors."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pydicom
import pytest
from _support import dciodvfy_errors

from mmclinic.case import Finding, Prediction, Provenance
from mmclinic.errors import InputError
from mmclinic.pacs.sr import ResultIds, build_sr, read_sources, read_sr_findings, task_content, to_bytes

WHEN = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def _pred(findings: tuple[Finding, ...], present: tuple[str, ...] = ("imaging",)) -> Prediction:
    prov = Provenance("a" * 64, "tumor-risk", "0.1.0", {}, "0.1.0", "b" * 64, {}, "cpu", {}, present)
    return Prediction("c1", "tumor-risk", 0.8, 0.61, findings, {}, prov)


@pytest.mark.parametrize("n_findings", [2, 0])
def test_sr_is_valid_tid1500_with_findings_or_none(
    study_files: list[Path], tmp_path: Path, n_findings: int, require_tool: Callable[[str], str]
) -> None:
    findings = tuple(Finding((10.0 * i, -20.0, 5.0 + i), 12.3 + i, 0.9, 0.7 - 0.1 * i) for i in range(n_findings))
    pred = _pred(findings)
    sources = read_sources(study_files)
    ids = ResultIds.for_key("7:fp:w", "a" * 64)
    ds = build_sr(pred, ids, sources, task_content(pred), when=WHEN)
    path = tmp_path / "sr.dcm"
    path.write_bytes(to_bytes(ds))
    assert dciodvfy_errors(require_tool("dciodvfy"), path) == []

    back = pydicom.dcmread(path)
    assert back.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert back.SOPInstanceUID == ids.sr_sop_uid and back.SeriesInstanceUID == ids.sr_series_uid
    assert back.StudyInstanceUID == sources[0].StudyInstanceUID  # a new series in the source study
    assert back.SeriesInstanceUID != sources[0].SeriesInstanceUID
    assert back.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    # evidence: every source instance is referenced
    refs = {
        i.ReferencedSOPInstanceUID
        for st in back.CurrentRequestedProcedureEvidenceSequence
        for se in st.ReferencedSeriesSequence
        for i in se.ReferencedSOPSequence
    }
    assert refs == {d.SOPInstanceUID for d in sources}
    parsed = read_sr_findings(back)
    assert parsed["case"]["Probability of cancer"] == pytest.approx(0.61)
    assert len(parsed["findings"]) == n_findings
    for got, want in zip(parsed["findings"], findings, strict=True):
        assert got["center_mm"] == pytest.approx(list(want.center_mm))
        assert got["frame_of_reference_uid"] == sources[0].FrameOfReferenceUID
        assert got["measurements"]["Diameter"] == pytest.approx(round(want.diameter_mm, 1))
        assert got["measurements"]["Probability of cancer"] == pytest.approx(want.malignancy_risk)
    if n_findings == 0:
        assert ("Finding", "None") in parsed["qualitative"]
    # notes and records were absent: the SR says so
    absent = {v for k, v in parsed["qualitative"] if k == "Input modality absent"}
    assert absent == {"Clinical notes", "Structured clinical records"}
    text = path.read_bytes()
    assert b"weights_sha256=" + b"a" * 64 in text  # algorithm parameters carry the weights hash
    assert b"mmclinic tumor-risk" in text  # AlgorithmIdentification name


def test_sr_identity_and_bytes_are_deterministic(study_files: list[Path]) -> None:
    pred = _pred((Finding((1.0, 2.0, 3.0), 8.0, 0.5, 0.5),))
    sources = read_sources(study_files)
    a = to_bytes(build_sr(pred, ResultIds.for_key("1:x:y", "w"), sources, task_content(pred), when=WHEN))
    b = to_bytes(build_sr(pred, ResultIds.for_key("1:x:y", "w"), sources, task_content(pred), when=WHEN))
    c = ResultIds.for_key("2:x:y", "w")
    assert a == b
    assert c.sr_sop_uid != ResultIds.for_key("1:x:y", "w").sr_sop_uid
    assert len(c.sr_sop_uid) <= 64 and c.sr_sop_uid.startswith("2.25.")


def test_sources_must_be_readable(tmp_path: Path) -> None:
    bad = tmp_path / "x.dcm"
    bad.write_bytes(b"not dicom at all" * 20)
    with pytest.raises(InputError) as exc:
        read_sources([bad])
    assert exc.value.reason == "pacs.source_unreadable"
    with pytest.raises(InputError) as exc:
        read_sources([])
    assert exc.value.reason == "pacs.no_sources"


def test_seg_of_lesion_mask_is_valid(
    study_files: list[Path], tmp_path: Path, require_tool: Callable[[str], str]
) -> None:
    import numpy as np

    from mmclinic.pacs.seg import build_seg, lesion_mask

    sources = sorted((pydicom.dcmread(f) for f in study_files), key=lambda d: float(d.ImagePositionPatient[2]))
    centre = [float(v) for v in sources[10].ImagePositionPatient]
    centre[0] += 100.0
    centre[1] += 120.0
    pred = _pred((Finding((centre[0], centre[1], centre[2]), 20.0, 0.9, 0.7),))
    mask = lesion_mask(pred, sources)
    voxel_mm3 = 5.0 * 5.0 * 5.0
    sphere_mm3 = 4.0 / 3.0 * np.pi * 10.0**3
    assert 0.5 * sphere_mm3 < mask.sum() * voxel_mm3 < 1.5 * sphere_mm3
    k, j, i = np.argwhere(mask).mean(axis=0)
    assert round(k) == 10 and abs(i * 5.0 - 100.0) < 3 and abs(j * 5.0 - 120.0) < 3  # where the centre is
    ids = ResultIds.for_key("9:fp:w", "w")
    seg = build_seg(pred, ids, sources)
    assert seg is not None and seg.SOPInstanceUID == ids.seg_sop_uid
    path = tmp_path / "seg.dcm"
    path.write_bytes(to_bytes(seg))
    assert dciodvfy_errors(require_tool("dciodvfy"), path) == []
    far = _pred((Finding((9999.0, 9999.0, 9999.0), 5.0, 0.9, 0.7),))
    assert build_seg(far, ids, sources) is None


def test_seg_of_an_enhanced_ct_source_follows_its_frames(tmp_path: Path, require_tool: Callable[[str], str]) -> None:
    # Enhanced CT keeps its planes in functional groups, not at the top level: the mask must read them.
    import sys

    import numpy as np

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "imaging"))
    from imaging_dicom_factory import SeriesGeometry, write_enhanced_ct

    from mmclinic.pacs.seg import build_seg, lesion_mask

    geom = SeriesGeometry(rows=32, cols=32, n_slices=12)
    # Frames stored out of z order: the mask must follow the frames as stored.
    src = pydicom.dcmread(write_enhanced_ct(tmp_path / "enh.dcm", geom, frame_order=[3, 0, 1, 2, *range(4, 12)]))
    centre = geom.voxel_to_lps(10, 20, 3)  # column 10, row 20, slice 3 = stored frame 0
    pred = _pred((Finding(tuple(float(v) for v in centre), 12.0, 0.9, 0.7),))  # type: ignore[arg-type]
    mask = lesion_mask(pred, [src])
    assert mask.shape == (12, 32, 32)
    _, j, i = np.argwhere(mask).mean(axis=0)
    assert abs(i - 10) < 0.5 and abs(j - 20) < 0.5
    # Frame 0 holds the centre slice; frames 3 and 4 the slices 5 mm either side; frame 1 (slice 0) is 15 mm off.
    assert mask[0].sum() > mask[3].sum() > 0 and mask[4].sum() > 0 and mask[1].sum() == 0
    # Type 2 attributes a scanner writes and the factory skips.
    type2 = ("PatientBirthDate", "PatientSex", "ReferringPhysicianName", "AccessionNumber", "StudyID", "StudyDate")
    for keyword in (*type2, "StudyTime"):
        setattr(src, keyword, getattr(src, keyword, ""))
    ids = ResultIds.for_key("9:fp:enh", "w")
    seg = build_seg(pred, ids, [src])
    assert seg is not None and int(seg.NumberOfFrames) >= 1
    path = tmp_path / "seg.dcm"
    path.write_bytes(to_bytes(seg))
    assert dciodvfy_errors(require_tool("dciodvfy"), path) == []
