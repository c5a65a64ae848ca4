"""Imaging plugin: every rejection reason, each provoked by a real (broken) DICOM file on disk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from imaging_dicom_factory import (
    SPEC,
    SeriesGeometry,
    SeriesOptions,
    folder_ref,
    make_plugin,
    write_ct_series,
)
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG2MPML, MRImageStorage, RLELossless

from mmclinic.case import StudyRef
from mmclinic.errors import InputError

GEOM = SeriesGeometry(n_slices=8)


def _edit(path: Path, fn: Callable[[pydicom.Dataset], None]) -> None:
    ds = pydicom.dcmread(path)
    fn(ds)
    ds.save_as(path)


def _reject(folder: Path, **overrides: object) -> InputError:
    with pytest.raises(InputError) as info:
        make_plugin(**overrides).load(folder_ref(folder), SPEC)
    return info.value


def test_no_files_at_all(tmp_path: Path) -> None:
    assert _reject(tmp_path).reason == "dicom.no_image_series"


def test_only_non_dicom_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("no images here")
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)) * 16)
    # Starts like a bare dataset (group 0008) so it is force-parsed, then turns into noise.
    noise = bytes(np.random.default_rng(3).integers(0, 256, 20000, dtype=np.uint8))
    (tmp_path / "raw.dcm").write_bytes(b"\x08\x00\x16\x00" + noise)
    err = _reject(tmp_path)
    assert err.reason == "dicom.no_image_series"
    assert "3 not DICOM instances" in err.detail


def test_only_non_image_objects(tmp_path: Path) -> None:
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.22"  # Enhanced SR: no pixels
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.Modality = "SR"
    ds.save_as(tmp_path / "sr.dcm", implicit_vr=False, little_endian=True, enforce_file_format=True)
    assert _reject(tmp_path).reason == "dicom.no_image_series"


def test_non_ct_only(tmp_path: Path) -> None:
    write_ct_series(tmp_path, GEOM, SeriesOptions(modality="MR", sop_class=MRImageStorage))
    err = _reject(tmp_path)
    assert err.reason == "dicom.not_ct"
    assert "MR" in err.detail


def test_only_a_localizer(tmp_path: Path) -> None:
    write_ct_series(tmp_path, GEOM, SeriesOptions(image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")))
    err = _reject(tmp_path)
    assert err.reason == "dicom.no_suitable_series"
    assert "rule.image_type" in err.detail


def test_missing_pixel_data(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, GEOM)
    _edit(paths[4], lambda ds: delattr(ds, "PixelData"))
    assert _reject(tmp_path).reason == "dicom.no_pixel_data"


def test_rows_columns_inconsistent_with_pixel_length(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, GEOM)
    _edit(paths[2], lambda ds: setattr(ds, "PixelData", ds.PixelData[:-64]))
    err = _reject(tmp_path)
    assert err.reason == "dicom.pixel_length_mismatch"
    assert "2048" in err.detail  # 32×32×16-bit


def test_pixel_data_a_frame_too_long(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, GEOM)
    _edit(paths[2], lambda ds: setattr(ds, "PixelData", ds.PixelData * 2))
    assert _reject(tmp_path).reason == "dicom.pixel_length_mismatch"


def test_trailing_padding_shorter_than_a_frame_is_tolerated(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, GEOM)
    _edit(paths[2], lambda ds: setattr(ds, "PixelData", ds.PixelData + b"\0" * 128))
    assert make_plugin().load(folder_ref(tmp_path), SPEC).summary["source_shape"] == [32, 32, 8]


def test_encapsulated_fewer_fragments_than_frames(tmp_path: Path) -> None:
    from imaging_dicom_factory import write_enhanced_ct
    from pydicom.uid import EnhancedCTImageStorage

    opts = SeriesOptions(
        sop_class=EnhancedCTImageStorage,
        image_type=("ORIGINAL", "PRIMARY", "AXIAL", "NONE"),
        transfer_syntax=RLELossless,
    )
    path = write_enhanced_ct(tmp_path / "mf.dcm", GEOM, opts)
    ds = pydicom.dcmread(path)
    frames = [f for f in pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=8)]
    ds.PixelData = encapsulate(frames[:5])
    ds.save_as(path)
    assert _reject(tmp_path).reason == "dicom.pixel_length_mismatch"


def test_gap_in_slices(tmp_path: Path) -> None:
    geom = SeriesGeometry(n_slices=8, offsets=[0, 5, 10, 15, 25, 30, 35, 40])  # slice at 20 mm missing
    write_ct_series(tmp_path, geom)
    err = _reject(tmp_path)
    assert err.reason == "dicom.nonuniform_spacing"
    assert "10 mm" in err.detail


def test_irregular_spacing(tmp_path: Path) -> None:
    geom = SeriesGeometry(n_slices=8, offsets=[0, 5, 10, 14, 20, 25, 31, 35])
    assert _reject(_written(tmp_path, geom)).reason == "dicom.nonuniform_spacing"


def test_small_jitter_is_tolerated(tmp_path: Path) -> None:
    geom = SeriesGeometry(n_slices=8, offsets=[0, 5.01, 10, 14.99, 20, 25.02, 30, 35])
    mi = make_plugin().load(folder_ref(_written(tmp_path, geom)), SPEC)
    assert mi.summary["source_shape"][2] == 8


def test_two_slices_at_one_position(tmp_path: Path) -> None:
    geom = SeriesGeometry(n_slices=8, offsets=[0, 5, 10, 15, 15, 20, 25, 30])
    err = _reject(_written(tmp_path, geom))
    assert err.reason == "dicom.nonuniform_spacing"
    assert "share one position" in err.detail


def _written(folder: Path, geom: SeriesGeometry) -> Path:
    write_ct_series(folder, geom)
    return folder


def test_mixed_orientation(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, GEOM)
    c, s = float(np.cos(np.radians(10))), float(np.sin(np.radians(10)))
    _edit(paths[5], lambda ds: setattr(ds, "ImageOrientationPatient", [1.0, 0.0, 0.0, 0.0, c, s]))
    assert _reject(tmp_path).reason == "dicom.mixed_orientation"


def test_inconsistent_in_plane_geometry(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, GEOM)
    _edit(paths[3], lambda ds: setattr(ds, "PixelSpacing", [2.5, 2.5]))
    assert _reject(tmp_path).reason == "dicom.inconsistent_geometry"


@pytest.mark.parametrize("keyword", ["ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"])
def test_missing_geometry(tmp_path: Path, keyword: str) -> None:
    paths = write_ct_series(tmp_path, GEOM)
    _edit(paths[1], lambda ds: delattr(ds, keyword))
    assert _reject(tmp_path).reason == "dicom.missing_geometry"


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")  # pydicom warns when the test writes it
def test_garbage_geometry_value(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, GEOM)
    _edit(paths[1], lambda ds: setattr(ds, "ImagePositionPatient", ["nan", "0", "0"]))
    assert _reject(tmp_path).reason == "dicom.missing_geometry"


@pytest.mark.parametrize("keep", [300, 700, -100])  # inside file meta, inside the header, inside pixel data
def test_truncated_file(tmp_path: Path, keep: int) -> None:
    paths = write_ct_series(tmp_path, GEOM)
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[:keep])
    assert _reject(tmp_path).reason == "dicom.truncated"


def test_unattributable_broken_file_can_be_tolerated(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, GEOM)
    (tmp_path / "cut.dcm").write_bytes(paths[0].read_bytes()[:300])  # a copy cut inside its file meta
    mi = make_plugin(reject_unreadable_files=False).load(folder_ref(tmp_path), SPEC)
    assert mi.summary["unreadable_files"] == 1
    assert _reject(tmp_path).reason == "dicom.truncated"


def test_truncated_compressed_file(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, GEOM, SeriesOptions(transfer_syntax=RLELossless))
    data = paths[3].read_bytes()
    paths[3].write_bytes(data[:-300])
    assert _reject(tmp_path).reason == "dicom.truncated"


def test_corrupt_compressed_data_is_unreadable(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, GEOM, SeriesOptions(transfer_syntax=RLELossless))
    # An RLE header announcing one segment at offset 64, followed by junk.
    junk = b"\x01\x00\x00\x00\x40\x00\x00\x00" + b"\x00" * 56 + b"\x05garbage" * 5
    _edit(paths[2], lambda ds: setattr(ds, "PixelData", encapsulate([junk])))
    err = _reject(tmp_path)
    assert err.reason == "dicom.unreadable"
    assert "RLE" in err.detail


def test_dicm_prefix_then_junk(tmp_path: Path) -> None:
    junk = b"\x00" * 128 + b"DICM" + bytes(np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8))
    (tmp_path / "broken.dcm").write_bytes(junk)
    assert _reject(tmp_path).reason in ("dicom.unreadable", "dicom.truncated")


def test_volume_over_voxel_cap_rejected_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_ct_series(tmp_path, GEOM)
    import mmclinic_imaging_dicom.pixels as pixels

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixels decoded for a volume over the cap")

    monkeypatch.setattr(pixels, "pixel_array", boom)
    err = _reject(tmp_path, max_voxels=32 * 32 * 7)
    assert err.reason == "dicom.too_large"


def test_header_claims_huge_volume(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, GEOM)
    for p in paths:  # 60000×60000 per slice with a tiny pixel element: the cap wins over the length check
        _edit(p, lambda ds: (setattr(ds, "Rows", 60000), setattr(ds, "Columns", 60000)))
    assert _reject(tmp_path).reason == "dicom.too_large"


def test_too_many_files(tmp_path: Path) -> None:
    write_ct_series(tmp_path, GEOM)
    assert _reject(tmp_path, max_files=5).reason == "dicom.too_large"


def test_unsupported_transfer_syntax(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, GEOM)

    def to_mpeg2(ds: pydicom.Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = MPEG2MPML
        ds.PixelData = encapsulate([b"\x00\x00\x01\xb3" + b"\x00" * 100])
        ds["PixelData"].VR = "OB"

    for p in paths:
        _edit(p, to_mpeg2)
    err = _reject(tmp_path)
    assert err.reason == "dicom.unsupported_transfer_syntax"
    assert MPEG2MPML in err.detail


def test_missing_folder_and_bad_reference(tmp_path: Path) -> None:
    assert _reject(tmp_path / "nope").reason == "dicom.not_found"
    with pytest.raises(InputError) as info:
        make_plugin().load(StudyRef(files=(tmp_path / "missing.dcm",)), SPEC)
    assert info.value.reason == "dicom.not_found"
    with pytest.raises(InputError) as info:
        make_plugin().load(42, SPEC)
    assert info.value.reason == "dicom.bad_reference"
    with pytest.raises(InputError) as info:
        make_plugin().load(StudyRef(), SPEC)
    assert info.value.reason == "dicom.bad_reference"


def test_broken_series_falls_back_to_a_good_one(tmp_path: Path) -> None:
    """A defect in one series does not sink the study when another eligible series is intact."""
    broken = write_ct_series(tmp_path, GEOM, SeriesOptions(series_number=3, description="CHEST 5mm"))
    _edit(broken[2], lambda ds: delattr(ds, "PixelData"))
    good_geom = SeriesGeometry(n_slices=16, slice_spacing=2.5)
    write_ct_series(tmp_path, good_geom, SeriesOptions(series_number=4, description="CHEST 2.5mm"))
    mi = make_plugin().load(folder_ref(tmp_path), SPEC)
    by_number = {s["series_number"]: s for s in mi.summary["series"]}
    assert by_number[4]["status"] == "chosen"
    assert by_number[3]["status"] == "skipped"
    assert [r["code"] for r in by_number[3]["reasons"]] == ["dicom.no_pixel_data"]


def test_error_details_carry_no_file_paths(tmp_path: Path) -> None:
    from mmclinic_imaging_dicom.reasons import describe

    spool = tmp_path / "DOE^JANE" / "study"  # spool layouts sometimes name folders after the patient
    assert "DOE" not in describe(EOFError(f"End of file in {spool / 'x.dcm'}"))
    paths = write_ct_series(spool, GEOM, SeriesOptions(transfer_syntax=RLELossless))
    paths[3].write_bytes(paths[3].read_bytes()[:-300])
    for study in (spool, tmp_path / "DOE^JANE"):
        err = _reject(study)
        assert "DOE" not in err.detail and str(tmp_path) not in err.detail
