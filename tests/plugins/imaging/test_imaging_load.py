"""Imaging plugin: loading real pydicom-written series, geometry round trips, ordering, duplicates, multi-frame."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from imaging_dicom_factory import (
    SPEC,
    SeriesGeometry,
    SeriesOptions,
    folder_ref,
    hu_volume,
    make_plugin,
    write_ct_series,
    write_enhanced_ct,
)
from mmclinic_imaging_dicom import nearest_source_slice, patient_mm_to_voxel, voxel_size_mm, voxel_to_patient_mm
from mmclinic_imaging_dicom.plugin import CtDicomPlugin
from pydicom.uid import ExplicitVRBigEndian, ImplicitVRLittleEndian

from mmclinic.case import StudyRef
from mmclinic.plugin_api import ImagingSpec, TaskSpec
from mmclinic.registry import Registry


def _centroid(image: np.ndarray, threshold: float) -> np.ndarray:
    """Intensity-weighted centre (voxel index) of what lies above ``threshold``."""
    v = image[0]
    w = np.clip(v - threshold, 0, None)
    idx = np.indices(v.shape).reshape(3, -1)
    return (idx * w.reshape(-1)).sum(1) / w.sum()


def test_entry_point_registers_ct_dicom() -> None:
    reg = Registry.discover()
    plugin = reg.get("modality", "ct-dicom")
    assert isinstance(plugin, CtDicomPlugin)
    assert reg.modality_for("imaging") is plugin


def test_load_basic_series(tmp_path: Path) -> None:
    geom = SeriesGeometry(rows=40, cols=48, n_slices=20, pixel_spacing=(4.0, 3.0), slice_spacing=2.5)
    write_ct_series(tmp_path, geom)
    mi = make_plugin().load(StudyRef(folder=tmp_path), SPEC)
    image = mi.data["image"]
    assert image.shape == (1, 64, 64, 32) and image.dtype == np.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    # Air (-1000 HU) maps to 0 and soft tissue (40 HU) to (40+1000)/1400 inside the body.
    assert float(image.min()) == 0.0
    assert np.isclose(float(np.median(image[image > 0.5])), 1040 / 1400, atol=0.02)
    assert mi.summary["source_shape"] == [48, 40, 20]
    assert mi.summary["source_spacing_mm"] == [3.0, 4.0, 2.5]
    assert [s["status"] for s in mi.summary["series"]] == ["chosen"]
    assert set(mi.fingerprint) == {"ct_series", "ct_series_uid"}
    assert len(mi.fingerprint["ct_series"]) == 64
    assert mi.meta["series_instance_uid"] == mi.fingerprint["ct_series_uid"]
    assert voxel_size_mm(mi.meta) == pytest.approx((5.0, 5.0, 5.0))


def test_fingerprint_tracks_file_bytes(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path, SeriesGeometry(n_slices=6))
    plugin = make_plugin()
    fp1 = plugin.load(folder_ref(tmp_path), SPEC).fingerprint
    assert plugin.load(folder_ref(tmp_path), SPEC).fingerprint == fp1
    data = bytearray(paths[3].read_bytes())
    data[-1] ^= 0x01  # one pixel bit: same UIDs, different bytes
    paths[3].write_bytes(bytes(data))
    fp2 = plugin.load(folder_ref(tmp_path), SPEC).fingerprint
    assert fp2["ct_series_uid"] == fp1["ct_series_uid"]
    assert fp2["ct_series"] != fp1["ct_series"]


GEOMETRIES = {
    "head_first_supine": SeriesGeometry(rows=40, cols=48, n_slices=24, pixel_spacing=(4.0, 3.0), slice_spacing=2.5),
    # Row direction pointing to the patient's right, so the normal points to the feet: MONAI must flip two axes.
    "flipped_feet_first": SeriesGeometry(
        rows=36,
        cols=36,
        n_slices=20,
        pixel_spacing=(4.5, 4.5),
        slice_spacing=3.0,
        row_dir=(-1.0, 0.0, 0.0),
        origin=(90.0, -60.0, 20.0),
    ),
    # Slightly oblique (5° about the x axis): the affine is not diagonal.
    "oblique": SeriesGeometry(
        rows=40,
        cols=40,
        n_slices=24,
        pixel_spacing=(4.0, 4.0),
        slice_spacing=4.0,
        col_dir=(0.0, float(np.cos(np.radians(5))), float(-np.sin(np.radians(5)))),
    ),
}


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_voxel_to_patient_round_trip_on_known_point(tmp_path: Path, name: str) -> None:
    geom = GEOMETRIES[name]
    blob = (geom.cols // 3, 2 * geom.rows // 3, geom.n_slices // 2 + 1)  # (col, row, slice), off-centre on purpose
    write_ct_series(tmp_path, geom, volume=hu_volume(geom, blob_at=blob))
    mi = make_plugin().load(folder_ref(tmp_path), SPEC)
    expected = geom.voxel_to_lps(*blob)
    found = voxel_to_patient_mm(mi.meta, _centroid(mi.data["image"], threshold=0.85))
    # Within half an output voxel (5 mm grid) of where DICOM says the blob is.
    assert np.linalg.norm(np.subtract(found, expected)) < 2.5, (found, expected)
    ijk = (3.25, 40.0, 17.5)
    assert patient_mm_to_voxel(mi.meta, voxel_to_patient_mm(mi.meta, ijk)) == pytest.approx(ijk, abs=1e-9)
    # The key-image helper finds the source slice that holds the blob.
    sop, frame = nearest_source_slice(mi.meta, expected)
    assert frame == 1
    assert sop == mi.meta["source_slices"][blob[2]][0]


def test_resampling_to_task_spacing_and_size(tmp_path: Path) -> None:
    geom = SeriesGeometry(rows=64, cols=64, n_slices=40, pixel_spacing=(1.0, 1.0), slice_spacing=1.0)
    write_ct_series(tmp_path, geom, volume=hu_volume(geom, blob_at=(40, 20, 25)))
    spec = TaskSpec("t", ("imaging",), (), ("x",), imaging=ImagingSpec((2.0, 2.0, 2.0), (40, 24, 16), (-500.0, 500.0)))
    mi = make_plugin().load(folder_ref(tmp_path), spec)
    assert mi.data["image"].shape == (1, 40, 24, 16)
    assert voxel_size_mm(mi.meta) == pytest.approx((2.0, 2.0, 2.0))
    assert mi.meta["preprocessing"]["hu_window"] == [-500.0, 500.0]
    found = voxel_to_patient_mm(mi.meta, _centroid(mi.data["image"], threshold=0.7))
    assert np.linalg.norm(np.subtract(found, geom.voxel_to_lps(40, 20, 25))) < 1.0


def test_slices_out_of_order_and_duplicates(tmp_path: Path) -> None:
    geom = SeriesGeometry(n_slices=10)
    vol = hu_volume(geom, blob_at=(8, 20, 6))
    ordered = tmp_path / "ordered"
    write_ct_series(ordered, geom, volume=vol)
    shuffled = tmp_path / "shuffled"
    shuffled.mkdir()
    rng = np.random.default_rng(7)
    files = sorted(ordered.iterdir())
    for new_index, path in zip(rng.permutation(len(files)), files, strict=True):
        shutil.copy(path, shuffled / f"img{new_index:03d}.dcm")
    for path in files[:3]:  # a PACS re-send: same SOP Instance UIDs under other names
        shutil.copy(path, shuffled / f"resend_{path.name}")
    plugin = make_plugin()
    a = plugin.load(folder_ref(ordered), SPEC)
    b = plugin.load(folder_ref(shuffled), SPEC)
    assert np.array_equal(a.data["image"], b.data["image"])
    assert a.fingerprint == b.fingerprint
    assert b.summary["series"][0]["duplicates_removed"] == 3
    assert b.summary["series"][0]["instances"] == 10
    volume, _ = plugin.load_volume(folder_ref(shuffled), SPEC)
    assert np.array_equal(volume.hu(), vol)


def test_file_list_reference_and_path_reference(tmp_path: Path) -> None:
    paths = write_ct_series(tmp_path / "s", SeriesGeometry(n_slices=8))
    (tmp_path / "s" / "README.txt").write_text("not dicom")
    plugin = make_plugin()
    by_files = plugin.load(StudyRef(files=tuple(paths)), SPEC)
    by_folder = plugin.load(tmp_path / "s", SPEC)
    assert by_files.fingerprint == by_folder.fingerprint
    assert by_folder.summary["skipped_files"] == 1


def test_study_folder_with_dicomdir(tmp_path: Path) -> None:
    """A CD/DVD export: DICOMDIR at the root, images below; the DICOMDIR is not an instance."""
    from imaging_dicom_factory import TEST_FILES

    write_ct_series(tmp_path / "IMAGES" / "S1", SeriesGeometry(n_slices=8))
    shutil.copy(TEST_FILES / "dicomdirtests" / "DICOMDIR", tmp_path / "DICOMDIR")
    mi = make_plugin().load(folder_ref(tmp_path), SPEC)
    assert mi.summary["skipped_files"] == 1 and mi.summary["unreadable_files"] == 0
    assert mi.summary["source_shape"][2] == 8


@pytest.mark.parametrize("ts", [ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_implicit_vr_and_big_endian(tmp_path: Path, ts: str) -> None:
    geom = SeriesGeometry(n_slices=8)
    vol = hu_volume(geom, blob_at=(10, 10, 4))
    write_ct_series(tmp_path, geom, SeriesOptions(transfer_syntax=ts), volume=vol)
    volume, summary = make_plugin().load_volume(folder_ref(tmp_path), SPEC)
    assert summary["series"][0]["transfer_syntaxes"] == [ts]
    assert np.array_equal(volume.hu(), vol)


def test_enhanced_multiframe_matches_single_frame(tmp_path: Path) -> None:
    geom = SeriesGeometry(rows=32, cols=32, n_slices=12, pixel_spacing=(4.0, 4.0), slice_spacing=3.0)
    vol = hu_volume(geom, blob_at=(20, 12, 5))
    write_ct_series(tmp_path / "legacy", geom, volume=vol)
    # Frames stored out of order: positions, not frame numbers, decide the slice order.
    write_enhanced_ct(tmp_path / "enhanced" / "mf.dcm", geom, volume=vol, frame_order=[*range(6, 12), *range(6)])
    plugin = make_plugin()
    legacy = plugin.load(folder_ref(tmp_path / "legacy"), SPEC)
    enhanced = plugin.load(folder_ref(tmp_path / "enhanced"), SPEC)
    assert enhanced.summary["series"][0]["frames"] == 12
    assert enhanced.summary["series"][0]["instances"] == 1
    assert np.allclose(enhanced.data["image"], legacy.data["image"])
    assert np.allclose(enhanced.meta["affine_lps"], legacy.meta["affine_lps"])
    volume, _ = plugin.load_volume(folder_ref(tmp_path / "enhanced"), SPEC)
    assert np.array_equal(volume.hu(), vol)
    # Frame numbers are 1-based and follow the stored order: slice 0 is frame 7.
    assert enhanced.meta["source_slices"][0][1] == 7


def test_highdicom_legacy_converted_enhanced_ct(tmp_path: Path) -> None:
    import highdicom as hd
    import pydicom

    geom = SeriesGeometry(n_slices=8)
    vol = hu_volume(geom, blob_at=(12, 12, 3))
    paths = write_ct_series(tmp_path / "legacy", geom, volume=vol)
    legacy = [pydicom.dcmread(p) for p in paths]
    mf = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=legacy,
        series_instance_uid=hd.UID(),
        series_number=9,
        sop_instance_uid=hd.UID(),
        instance_number=1,
    )
    (tmp_path / "mf").mkdir()
    mf.save_as(tmp_path / "mf" / "lce.dcm")
    volume, summary = make_plugin().load_volume(folder_ref(tmp_path / "mf"), SPEC)
    assert summary["series"][0]["sop_class_uid"] == "1.2.840.10008.5.1.4.1.1.2.2"
    assert np.array_equal(volume.hu(), vol)


def test_gantry_tilt_keeps_shear_in_affine(tmp_path: Path) -> None:
    # Tilted image plane, slices stacked straight along z (how tilted scanners write it).
    tilt = np.radians(12)
    col_dir = (0.0, float(np.cos(tilt)), float(np.sin(tilt)))
    geom = SeriesGeometry(rows=40, cols=40, n_slices=20, pixel_spacing=(4.0, 4.0), col_dir=col_dir)
    normal = geom.normal()
    step = 4.0 / float(normal[2])  # positions move along z by this, so the normal step stays 4 mm
    geom.offsets = [k * step for k in range(20)]
    positions = [np.asarray(geom.origin) + np.array([0.0, 0.0, k * step]) for k in range(20)]
    geom.position = lambda k: positions[k]  # type: ignore[method-assign]
    write_ct_series(tmp_path, geom)
    mi = make_plugin().load(folder_ref(tmp_path), SPEC)
    src = np.asarray(mi.meta["source_affine_lps"])
    assert np.allclose(src[:3, 2], [0.0, 0.0, step])
    assert np.allclose(src @ [0, 0, 19, 1], [*positions[19], 1.0])


def test_select_series_reads_headers_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mmclinic_imaging_dicom.pixels as pixels

    write_ct_series(tmp_path, SeriesGeometry(n_slices=8), SeriesOptions(series_number=5))
    monkeypatch.setattr(pixels, "read_volume", lambda *a, **k: pytest.fail("pixels read during selection"))
    summary = make_plugin().select_series(folder_ref(tmp_path), SPEC)
    assert summary["series"][0]["status"] == "chosen"
    assert summary["chosen_series"] == summary["series"][0]["series_instance_uid"]


def test_plugin_geometry_hooks_match_coords(tmp_path: Path) -> None:
    from mmclinic.engine.geometry import patient_to_voxel, voxel_to_patient

    write_ct_series(tmp_path, GEOMETRIES["flipped_feet_first"])
    plugin = make_plugin()
    meta = plugin.load(folder_ref(tmp_path), SPEC).meta
    ijk = (10.0, 20.5, 3.0)
    assert plugin.voxel_to_patient(meta, ijk) == voxel_to_patient_mm(meta, ijk)
    assert voxel_to_patient(plugin, meta, ijk) == pytest.approx(voxel_to_patient_mm(meta, ijk))
    assert patient_to_voxel(plugin, meta, voxel_to_patient(plugin, meta, ijk)) == pytest.approx(ijk)
