"""Test helper: writes small but valid CT series (legacy single-frame or enhanced multi-frame) with pydicom."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from mmclinic_imaging_dicom.config import CtDicomConfig
from mmclinic_imaging_dicom.plugin import CtDicomPlugin
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from mmclinic.case import StudyRef
from mmclinic.plugin_api import TaskSpec

Vec3 = tuple[float, float, float]

SPEC = TaskSpec(name="imaging-test", required_modalities=("imaging",), optional_modalities=(), labels=("x",))
TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def require(condition: bool, reason: str) -> None:
    """Skip unless ``condition``; under MMCLINIC_REQUIRE_ALL=1 a missing prerequisite fails instead."""
    if not condition:
        if os.environ.get("MMCLINIC_REQUIRE_ALL") == "1":
            pytest.fail(reason + " (MMCLINIC_REQUIRE_ALL=1)")
        pytest.skip(reason)


def require_tool(name: str) -> str:
    """Path of an external tool (skip, or fail under MMCLINIC_REQUIRE_ALL=1, when missing)."""
    path = shutil.which(name)
    require(path is not None, f"external tool {name!r} is not installed")
    assert path is not None
    return path


def make_plugin(**overrides: Any) -> CtDicomPlugin:
    """The plugin with test-sized selection rules (small series) plus overrides."""
    selection = {"min_slices": 4, **overrides.pop("selection", {})}
    return CtDicomPlugin(CtDicomConfig.model_validate({"selection": selection, **overrides}))


def folder_ref(folder: Path) -> StudyRef:
    return StudyRef(folder=folder)


@dataclass
class SeriesGeometry:
    """Where a synthetic series sits in patient space (LPS mm), DICOM conventions."""

    rows: int = 32
    cols: int = 32
    n_slices: int = 12
    pixel_spacing: tuple[float, float] = (5.0, 5.0)  # (between rows, between columns)
    slice_spacing: float = 5.0
    thickness: float | None = None  # defaults to slice_spacing
    origin: Vec3 = (-80.0, -80.0, -30.0)
    row_dir: Vec3 = (1.0, 0.0, 0.0)
    col_dir: Vec3 = (0.0, 1.0, 0.0)
    # Explicit per-slice z offsets (mm along the normal) override the regular grid: gaps, jitter.
    offsets: Sequence[float] | None = None

    def normal(self) -> np.ndarray:
        return np.cross(np.asarray(self.row_dir), np.asarray(self.col_dir))

    def slice_offsets(self) -> list[float]:
        if self.offsets is not None:
            return list(self.offsets)
        return [k * self.slice_spacing for k in range(self.n_slices)]

    def position(self, k: int) -> np.ndarray:
        return np.asarray(self.origin) + self.slice_offsets()[k] * self.normal()

    def voxel_to_lps(self, col: float, row: float, k: float) -> np.ndarray:
        """Textbook DICOM mapping (PS3.3 C.7.6.2.1.1), independent of the plugin's code."""
        r, c = np.asarray(self.row_dir), np.asarray(self.col_dir)
        origin = np.asarray(self.origin)
        return (
            origin
            + col * self.pixel_spacing[1] * r
            + row * self.pixel_spacing[0] * c
            + k * self.slice_spacing * self.normal()
        )


@dataclass
class SeriesOptions:
    """Header choices of a synthetic series."""

    modality: str = "CT"
    sop_class: str = CTImageStorage
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL")
    series_uid: str = field(default_factory=generate_uid)
    study_uid: str = "1.2.826.0.1.3680043.8.498.1"
    description: str = "CHEST 5mm"
    transfer_syntax: str = ExplicitVRLittleEndian
    encoding_plugin: str = ""
    compress_kwargs: dict[str, Any] = field(default_factory=dict)
    slope: float = 1.0
    intercept: float = -1024.0
    series_number: int = 2


def hu_volume(geom: SeriesGeometry, blob_at: tuple[int, int, int] | None = None, radius: int = 2) -> np.ndarray:
    """HU volume [slices, rows, cols]: air, a soft-tissue body ellipse, optionally a dense cube blob.

    ``blob_at`` is (col, row, slice) of the blob centre in the source grid.
    """
    vol = np.full((geom.n_slices, geom.rows, geom.cols), -1000.0, dtype=np.float32)
    yy, xx = np.mgrid[0 : geom.rows, 0 : geom.cols]
    body = ((yy - geom.rows / 2) / (geom.rows * 0.4)) ** 2 + ((xx - geom.cols / 2) / (geom.cols * 0.45)) ** 2 <= 1
    vol[:, body] = 40.0
    if blob_at is not None:
        c, r, k = blob_at
        vol[
            max(k - radius, 0) : k + radius + 1,
            max(r - radius, 0) : r + radius + 1,
            max(c - radius, 0) : c + radius + 1,
        ] = 300.0
    return vol


def _base_dataset(geom: SeriesGeometry, opts: SeriesOptions, sop_uid: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = opts.sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = opts.sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = opts.study_uid
    ds.SeriesInstanceUID = opts.series_uid
    ds.FrameOfReferenceUID = opts.study_uid + ".9"
    ds.Modality = opts.modality
    ds.PatientName = "Test^Synthetic"
    ds.PatientID = "SYN-0001"
    ds.SeriesNumber = opts.series_number
    ds.SeriesDescription = opts.description
    ds.ImageType = list(opts.image_type)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = geom.rows
    ds.Columns = geom.cols
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    return ds


def _stored(hu: np.ndarray, opts: SeriesOptions) -> np.ndarray:
    return np.round((hu - opts.intercept) / opts.slope).astype(np.int16)


def _save(ds: Dataset, path: Path, opts: SeriesOptions, arr: np.ndarray) -> None:
    ts = pydicom.uid.UID(opts.transfer_syntax)
    if ts.is_compressed:
        ds.PixelData = arr.tobytes()
        ds.compress(ts, arr, encoding_plugin=opts.encoding_plugin, generate_instance_uid=False, **opts.compress_kwargs)
        ds.save_as(path, enforce_file_format=True)
        return
    ds.PixelData = arr.tobytes()
    ds.file_meta.TransferSyntaxUID = ts
    if ts == ExplicitVRBigEndian:
        ds.PixelData = arr.astype(">i2").tobytes()
        ds.save_as(path, implicit_vr=False, little_endian=False, enforce_file_format=True)
    elif ts == ImplicitVRLittleEndian:
        ds.save_as(path, implicit_vr=True, little_endian=True, enforce_file_format=True)
    else:
        ds.save_as(path, implicit_vr=False, little_endian=True, enforce_file_format=True)


def write_ct_series(
    folder: Path,
    geom: SeriesGeometry | None = None,
    opts: SeriesOptions | None = None,
    volume: np.ndarray | None = None,
    prefix: str = "ct",
) -> list[Path]:
    """One file per slice, written in acquisition order; returns the paths (slice k → paths[k])."""
    geom = geom or SeriesGeometry()
    opts = opts or SeriesOptions()
    vol = hu_volume(geom) if volume is None else volume
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(len(geom.slice_offsets())):
        ds = _base_dataset(geom, opts, generate_uid())
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(v) for v in geom.position(k)]
        ds.ImageOrientationPatient = [*map(float, geom.row_dir), *map(float, geom.col_dir)]
        ds.PixelSpacing = [float(v) for v in geom.pixel_spacing]
        ds.SliceThickness = float(geom.thickness if geom.thickness is not None else geom.slice_spacing)
        ds.RescaleSlope = opts.slope
        ds.RescaleIntercept = opts.intercept
        ds.RescaleType = "HU"
        path = folder / f"{prefix}_{opts.series_number}_{k:04d}.dcm"
        _save(ds, path, opts, _stored(vol[k], opts))
        paths.append(path)
    return paths


def write_enhanced_ct(
    path: Path,
    geom: SeriesGeometry | None = None,
    opts: SeriesOptions | None = None,
    volume: np.ndarray | None = None,
    frame_order: Sequence[int] | None = None,
) -> Path:
    """One Enhanced CT Image Storage instance holding every slice as a frame (functional groups)."""
    geom = geom or SeriesGeometry()
    opts = opts or SeriesOptions(sop_class=EnhancedCTImageStorage, image_type=("ORIGINAL", "PRIMARY", "AXIAL", "NONE"))
    vol = hu_volume(geom) if volume is None else volume
    order = list(frame_order) if frame_order is not None else list(range(len(geom.slice_offsets())))
    ds = _base_dataset(geom, opts, generate_uid())
    ds.InstanceNumber = 1
    ds.NumberOfFrames = len(order)

    shared = Dataset()
    measures = Dataset()
    measures.PixelSpacing = [float(v) for v in geom.pixel_spacing]
    measures.SliceThickness = float(geom.thickness if geom.thickness is not None else geom.slice_spacing)
    shared.PixelMeasuresSequence = DicomSequence([measures])
    orient = Dataset()
    orient.ImageOrientationPatient = [*map(float, geom.row_dir), *map(float, geom.col_dir)]
    shared.PlaneOrientationSequence = DicomSequence([orient])
    transform = Dataset()
    transform.RescaleSlope = opts.slope
    transform.RescaleIntercept = opts.intercept
    transform.RescaleType = "HU"
    shared.PixelValueTransformationSequence = DicomSequence([transform])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])

    per_frame = []
    for k in order:
        item = Dataset()
        pos = Dataset()
        pos.ImagePositionPatient = [float(v) for v in geom.position(k)]
        item.PlanePositionSequence = DicomSequence([pos])
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(ds, path, opts, _stored(vol[order], opts))
    return path
