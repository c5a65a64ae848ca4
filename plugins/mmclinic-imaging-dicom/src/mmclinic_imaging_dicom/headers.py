"""Study scan: list files, read DICOM headers only (never pixel bytes), group instances into series."""

from __future__ import annotations

import os
import struct
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from mmclinic.case import StudyRef
from mmclinic.errors import InputError
from mmclinic_imaging_dicom import reasons as R

PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00009, 0x7FE00008})
_UNDEFINED = 0xFFFFFFFF
# Explicit-VR elements whose length field is 4 bytes after 2 reserved bytes (PS3.5 7.1.2).
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})


@dataclass(frozen=True)
class PixelElement:
    """Where the pixel data element sits in the file, from its 8- or 12-byte element header."""

    offset: int
    header_len: int
    length: int  # declared value length; 0xFFFFFFFF for encapsulated (undefined length)

    @property
    def encapsulated(self) -> bool:
        return self.length == _UNDEFINED


@dataclass(frozen=True)
class FrameInfo:
    """Geometry and value transform of one 2D frame (a single-frame instance has one)."""

    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    thickness: float | None
    slope: float
    intercept: float
    frame_type: tuple[str, ...] = ()


@dataclass
class InstanceHeader:
    """One DICOM instance as read from its header (the dataset holds no pixel data)."""

    path: Path
    size: int
    dataset: Dataset
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    frame_of_reference_uid: str
    modality: str
    sop_class_uid: str
    image_type: tuple[str, ...]
    description: str
    series_number: int | None
    transfer_syntax: str
    rows: int
    cols: int
    frames: int
    samples_per_pixel: int
    bits_allocated: int
    pixel: PixelElement | None
    frame_infos: list[FrameInfo] = field(default_factory=list)
    # (reason, detail) problems visible from the header: truncation, missing or mis-sized pixel data.
    defects: list[tuple[str, str]] = field(default_factory=list)
    geometry_error: str | None = None

    @property
    def is_image(self) -> bool:
        return self.rows > 0 and self.cols > 0


@dataclass
class SeriesHeaders:
    """The instances of one SeriesInstanceUID, duplicates (same SOP Instance UID) removed."""

    uid: str
    instances: list[InstanceHeader]
    duplicates: int = 0

    @property
    def first(self) -> InstanceHeader:
        """The representative instance: the first image one (a truncated file may have lost its Rows)."""
        return next((i for i in self.instances if i.is_image), self.instances[0])

    @property
    def n_frames(self) -> int:
        return sum(inst.frames for inst in self.instances)


@dataclass
class StudyScan:
    """Everything the header pass learned about a study."""

    series: list[SeriesHeaders]
    files_found: int
    skipped_files: int  # not DICOM, or DICOM without an SOP identity (DICOMDIR)
    # (reason, detail) for files that look like DICOM but whose header could not be read.
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def list_files(ref: StudyRef, max_files: int) -> list[Path]:
    """The files of a study reference, in a stable order; InputError on a missing path or too many files."""
    if ref.files:
        files = [Path(p) for p in ref.files]
        missing = [p for p in files if not p.is_file()]
        if missing:
            raise InputError(R.NOT_FOUND, f"{len(missing)} of {len(files)} listed files do not exist")
    elif ref.folder is not None:
        folder = Path(ref.folder)
        if not folder.is_dir():
            raise InputError(R.NOT_FOUND, "study folder does not exist")
        files = []
        # os.walk without following links: a link loop in a PACS spool must not recurse forever.
        for root, dirs, names in os.walk(folder, followlinks=False):
            dirs.sort()
            for name in sorted(names):
                path = Path(root) / name
                if path.is_file():
                    files.append(path)
                    if len(files) > max_files:
                        raise InputError(R.TOO_LARGE, f"study folder holds more than {max_files} files")
    else:
        raise InputError(R.BAD_REFERENCE, "StudyRef names neither a folder nor files")
    if len(files) > max_files:
        raise InputError(R.TOO_LARGE, f"{len(files)} files exceed the limit of {max_files}")
    return sorted(set(files))


def _has_dicm_prefix(fh: BinaryIO) -> bool:
    fh.seek(128)
    return fh.read(4) == b"DICM"


def _plausible_raw_dataset(fh: BinaryIO) -> bool:
    """Whether a file without the DICM prefix starts like a bare dataset (group 0002 or 0008 first).

    Forced parsing of arbitrary bytes can ask for gigabyte-long values; only plausible files get it.
    """
    fh.seek(0)
    return fh.read(2) in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")  # either byte order


def _read_pixel_element(fh: BinaryIO, offset: int, size: int, implicit: bool, little: bool) -> PixelElement | None:
    """Parse the pixel data element header at ``offset`` (where pydicom stopped) without reading its value."""
    if offset >= size:
        return None
    fh.seek(offset)
    head = fh.read(12)
    if len(head) < 8:
        return PixelElement(offset, -1, 0)  # the file ends inside the element header
    endian = "<" if little else ">"
    group, elem = struct.unpack(endian + "HH", head[:4])
    if (group << 16 | elem) not in PIXEL_TAGS:
        return None
    if implicit:
        return PixelElement(offset, 8, struct.unpack(endian + "I", head[4:8])[0])
    if head[4:6] in _LONG_VRS:
        if len(head) < 12:
            return PixelElement(offset, -1, 0)  # the file ends inside the element header
        return PixelElement(offset, 12, struct.unpack(endian + "I", head[8:12])[0])
    return PixelElement(offset, 8, struct.unpack(endian + "H", head[6:8])[0])


def _header_truncated(ds: Dataset) -> bool:
    """True when the file ended inside the last element read (pydicom keeps the short value silently)."""
    tags = list(ds.keys())
    if not tags:
        return False
    raw = ds.get_item(tags[-1], keep_deferred=True)
    if isinstance(raw, RawDataElement) and raw.value is not None and raw.length != _UNDEFINED:
        return len(raw.value) < raw.length
    return False


def _meta_truncated(ds: Dataset, size: int) -> bool:
    """True when the file is shorter than its File Meta Information group says it is."""
    meta = getattr(ds, "file_meta", None)
    group_length = meta.get("FileMetaInformationGroupLength") if meta is not None else None
    # 128-byte preamble + "DICM" + the group length element itself (12 bytes) + the group.
    return group_length is not None and size < 144 + int(group_length)


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    if ts:
        return str(ts)
    implicit, little = ds.original_encoding
    if implicit:
        return str(ImplicitVRLittleEndian)
    return str(ExplicitVRLittleEndian if little else ExplicitVRBigEndian)


def _expected_native_length(inst: InstanceHeader) -> int:
    pixels = inst.rows * inst.cols * inst.frames
    if inst.bits_allocated == 1:
        return (pixels * inst.samples_per_pixel + 7) // 8
    samples = inst.samples_per_pixel
    if _text(inst.dataset, 0x00280004) == "YBR_FULL_422":
        samples = 2  # chroma is subsampled 2:1 horizontally (PS3.3 C.7.6.3.1.2)
    return pixels * samples * (inst.bits_allocated // 8)


def _pixel_defects(inst: InstanceHeader) -> list[tuple[str, str]]:
    pix = inst.pixel
    if pix is None:
        return [(R.NO_PIXEL_DATA, "instance has no PixelData element")] if inst.is_image else []
    if pix.header_len < 0:
        return [(R.TRUNCATED, "file ends inside the pixel data element header")]
    if pix.encapsulated:
        if not is_compressed(inst.transfer_syntax):
            return [(R.PIXEL_LENGTH_MISMATCH, "native transfer syntax with encapsulated (undefined-length) pixel data")]
        return []
    if pix.offset + pix.header_len + pix.length > inst.size:
        have = inst.size - pix.offset - pix.header_len
        return [(R.TRUNCATED, f"pixel data declares {pix.length} bytes, file holds {have}")]
    if is_compressed(inst.transfer_syntax):
        return [(R.PIXEL_LENGTH_MISMATCH, "compressed transfer syntax with native (defined-length) pixel data")]
    expected = _expected_native_length(inst)
    frame_bytes = expected // max(inst.frames, 1)
    # Less data than the header promises is fatal; trailing padding shorter than a frame is tolerated
    # (pydicom ignores it), but a whole extra frame or more means Rows/Columns/NumberOfFrames lie.
    if pix.length < expected or pix.length - expected >= max(frame_bytes, 2):
        return [
            (
                R.PIXEL_LENGTH_MISMATCH,
                f"Rows×Columns×frames×samples×bits needs {expected} bytes, PixelData has {pix.length}",
            )
        ]
    return []


def read_header(path: Path) -> InstanceHeader | None:
    """Read one file's header; ``None`` when the file is not DICOM at all.

    Raises ``InputError`` (``dicom.truncated`` / ``dicom.unreadable``) for a DICOM file whose header is broken.
    """
    size = path.stat().st_size
    with path.open("rb") as fh:
        is_dicm = _has_dicm_prefix(fh)
        if not is_dicm and not _plausible_raw_dataset(fh):
            return None
        fh.seek(0)
        try:
            ds = dcmread(fh, stop_before_pixels=True, force=not is_dicm)
        except InvalidDicomError:
            return None
        except EOFError as exc:
            if is_dicm:
                raise InputError(R.TRUNCATED, f"header ends early: {R.describe(exc)}") from exc
            return None
        except Exception as exc:
            if is_dicm:
                raise InputError(R.UNREADABLE, f"header: {R.describe(exc)}") from exc
            return None
        if "SOPInstanceUID" not in ds or "SOPClassUID" not in ds:
            if is_dicm and (_header_truncated(ds) or _meta_truncated(ds, size)):
                raise InputError(R.TRUNCATED, "file ends before the SOP identity is complete")
            # Forced parsing of a non-DICOM file yields garbage, and a DICOMDIR (media directory) has
            # no SOP identity in its dataset: neither is an instance of the study.
            return None
        offset = fh.tell()
        try:
            return _build_instance(path, size, fh, ds, offset)
        except InputError:
            raise
        except Exception as exc:  # a malformed value (bad IS/DS/UI) in an element we need
            raise InputError(R.UNREADABLE, f"header value: {R.describe(exc)}") from exc


# Tags read from every header. Text VRs (DS, IS, CS, UI, LO) are ASCII, so their raw bytes are parsed
# directly: pydicom's per-value conversion and regex validation cost more than the file read itself.
_T_IMAGE_TYPE = 0x00080008
_T_SOP_CLASS = 0x00080016
_T_SOP_INSTANCE = 0x00080018
_T_MODALITY = 0x00080060
_T_SERIES_DESCRIPTION = 0x0008103E
_T_SLICE_THICKNESS = 0x00180050
_T_STUDY_UID = 0x0020000D
_T_SERIES_UID = 0x0020000E
_T_SERIES_NUMBER = 0x00200011
_T_POSITION = 0x00200032
_T_ORIENTATION = 0x00200037
_T_FRAME_OF_REFERENCE = 0x00200052
_T_NUMBER_OF_FRAMES = 0x00280008
_T_PIXEL_SPACING = 0x00280030
_T_RESCALE_INTERCEPT = 0x00281052
_T_RESCALE_SLOPE = 0x00281053


def _raw(ds: Dataset, tag: int) -> Any:
    """An element's value without pydicom's conversion: raw bytes when never accessed, else the value."""
    elem = ds.get_item(tag)
    if elem is None:
        return None
    return elem.value


def _text(ds: Dataset, tag: int) -> str:
    value = _raw(ds, tag)
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("ascii", errors="replace").strip(" \0")
    if isinstance(value, str):
        return value.strip()
    return "\\".join(str(v) for v in value)  # an already-converted multi-value


def _texts(ds: Dataset, tag: int) -> tuple[str, ...]:
    text = _text(ds, tag)
    return tuple(v.strip() for v in text.split("\\")) if text else ()


def _number(ds: Dataset, tag: int) -> float | None:
    values = _numbers(ds, tag)
    if values is None:
        return None
    if len(values) != 1:
        raise ValueError(f"expected one value in {tag:08X}, got {len(values)}")
    return values[0]


def _numbers(ds: Dataset, tag: int) -> tuple[float, ...] | None:
    value = _raw(ds, tag)
    if value is None:
        return None
    if isinstance(value, bytes):
        parts = [v for v in value.decode("ascii").split("\\")]
        if not any(p.strip() for p in parts):
            return None
        out = tuple(float(v) for v in parts)
    elif isinstance(value, str | int | float):
        if value == "":
            return None
        out = (float(value),)
    else:
        out = tuple(float(v) for v in value)
    if not all(abs(v) < 1e9 for v in out):  # NaN and inf fail this too
        raise ValueError("non-finite numeric value")
    return out


def us_value(ds: Dataset, tag: int, default: int) -> int:
    """An unsigned short (US) element, unpacked from its raw bytes in the dataset's byte order."""
    elem = ds.get_item(tag)
    if elem is None:
        return default
    if isinstance(elem, RawDataElement) and isinstance(elem.value, bytes):
        if len(elem.value) < 2:
            return default
        return int(struct.unpack("<H" if elem.is_little_endian else ">H", elem.value[:2])[0])
    value = elem.value
    return default if value is None or value == "" else int(value)


@lru_cache(maxsize=64)
def is_compressed(transfer_syntax: str) -> bool:
    """Whether a transfer syntax encapsulates (compresses) pixel data; cached, UID() validates on creation."""
    return bool(UID(transfer_syntax).is_compressed)


def _build_instance(path: Path, size: int, fh: BinaryIO, ds: Dataset, offset: int) -> InstanceHeader:
    ts = _transfer_syntax(ds)
    implicit, little = ds.original_encoding
    # A deflated dataset is read through an inflating stream, so file offsets are meaningless there.
    deflated = ts == DeflatedExplicitVRLittleEndian
    pixel = None if deflated else _read_pixel_element(fh, offset, size, bool(implicit), bool(little))
    if deflated:
        pixel = PixelElement(-1, 0, _UNDEFINED)
    series_number = _number(ds, _T_SERIES_NUMBER)
    frames = _number(ds, _T_NUMBER_OF_FRAMES)
    description = _raw(ds, _T_SERIES_DESCRIPTION)
    inst = InstanceHeader(
        path=path,
        size=size,
        dataset=ds,
        sop_instance_uid=_text(ds, _T_SOP_INSTANCE),
        series_uid=_text(ds, _T_SERIES_UID),
        study_uid=_text(ds, _T_STUDY_UID),
        frame_of_reference_uid=_text(ds, _T_FRAME_OF_REFERENCE),
        modality=_text(ds, _T_MODALITY).upper(),
        sop_class_uid=_text(ds, _T_SOP_CLASS),
        image_type=tuple(v.upper() for v in _texts(ds, _T_IMAGE_TYPE)),
        # LO may use the dataset's character set: let pydicom decode it (it is not on the hot path).
        description=str(ds.get("SeriesDescription", "")) if description is not None else "",
        series_number=int(series_number) if series_number is not None else None,
        transfer_syntax=ts,
        rows=us_value(ds, 0x00280010, 0),
        cols=us_value(ds, 0x00280011, 0),
        frames=max(int(frames) if frames is not None else 1, 1),
        samples_per_pixel=us_value(ds, 0x00280002, 1),
        bits_allocated=us_value(ds, 0x00280100, 16),
        pixel=pixel,
    )
    if pixel is None and _header_truncated(ds):
        inst.defects.append((R.TRUNCATED, "file ends inside a header element"))
    elif not deflated:
        inst.defects.extend(_pixel_defects(inst))
    if inst.is_image:
        try:
            inst.frame_infos = _frame_infos(ds, inst.frames)
        except (ValueError, TypeError, IndexError, AttributeError, KeyError) as exc:
            inst.geometry_error = R.describe(exc)
    return inst


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    if value is None or value == "":
        return None
    seq = [value] if isinstance(value, str | bytes) or not hasattr(value, "__iter__") else list(value)
    if len(seq) != n:
        raise ValueError(f"expected {n} values, got {len(seq)}")
    out = tuple(float(v) for v in seq)
    if not all(abs(v) < 1e9 for v in out):  # NaN and inf fail this too
        raise ValueError("non-finite geometry value")
    return out


def _macro(item: Dataset | None, shared: Dataset | None, sequence: str, keyword: str) -> Any:
    """Look a functional-group attribute up per frame first, then in the shared groups (PS3.3 C.7.6.16)."""
    for group in (item, shared):
        if group is not None and sequence in group and len(group[sequence].value) > 0:
            seq_item = group[sequence].value[0]
            if keyword in seq_item:
                return seq_item.get(keyword)
    return None


def _frame_infos(ds: Dataset, frames: int) -> list[FrameInfo]:
    if "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds:
        shared_seq = ds.get("SharedFunctionalGroupsSequence") or []
        shared = shared_seq[0] if len(shared_seq) else None
        per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
        if len(per_frame) not in (0, frames):
            raise ValueError(f"{len(per_frame)} per-frame items for {frames} frames")
        infos = []
        for i in range(frames):
            item = per_frame[i] if len(per_frame) else None
            pos = _floats(_macro(item, shared, "PlanePositionSequence", "ImagePositionPatient"), 3)
            ori = _floats(_macro(item, shared, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
            spacing = _floats(_macro(item, shared, "PixelMeasuresSequence", "PixelSpacing"), 2)
            thick = _macro(item, shared, "PixelMeasuresSequence", "SliceThickness")
            slope = _macro(item, shared, "PixelValueTransformationSequence", "RescaleSlope")
            intercept = _macro(item, shared, "PixelValueTransformationSequence", "RescaleIntercept")
            ftype = _macro(item, shared, "CTImageFrameTypeSequence", "FrameType") or ()
            infos.append(
                FrameInfo(
                    position=pos,  # type: ignore[arg-type]
                    orientation=ori,  # type: ignore[arg-type]
                    pixel_spacing=spacing,  # type: ignore[arg-type]
                    thickness=float(thick) if thick not in (None, "") else None,
                    slope=float(slope) if slope not in (None, "") else 1.0,
                    intercept=float(intercept) if intercept not in (None, "") else 0.0,
                    frame_type=tuple(str(v).upper() for v in ftype),
                )
            )
        return infos
    slope = _number(ds, _T_RESCALE_SLOPE)
    intercept = _number(ds, _T_RESCALE_INTERCEPT)
    info = FrameInfo(
        position=_floats(_numbers(ds, _T_POSITION), 3),  # type: ignore[arg-type]
        orientation=_floats(_numbers(ds, _T_ORIENTATION), 6),  # type: ignore[arg-type]
        pixel_spacing=_floats(_numbers(ds, _T_PIXEL_SPACING), 2),  # type: ignore[arg-type]
        thickness=_number(ds, _T_SLICE_THICKNESS),
        slope=slope if slope is not None else 1.0,
        intercept=intercept if intercept is not None else 0.0,
    )
    if frames > 1:
        # Legacy multi-frame without functional groups has no per-frame positions.
        raise ValueError("multi-frame instance without functional groups")
    return [info]


def scan_study(ref: StudyRef, max_files: int) -> StudyScan:
    """Header pass over a study: every instance's header, grouped by series and de-duplicated."""
    files = list_files(ref, max_files)
    by_series: dict[str, dict[str, InstanceHeader]] = {}
    duplicates: dict[str, int] = {}
    unreadable: list[tuple[str, str]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns on every oddity; we report decisions ourselves
        for path in files:
            _scan_one(path, by_series, duplicates, unreadable)
    skipped = len(files) - sum(len(v) for v in by_series.values()) - sum(duplicates.values()) - len(unreadable)
    groups = [SeriesHeaders(uid, list(insts.values()), duplicates.get(uid, 0)) for uid, insts in by_series.items()]
    groups.sort(key=lambda s: (s.first.series_number if s.first.series_number is not None else 1 << 30, s.uid))
    return StudyScan(groups, len(files), skipped, unreadable)


def _scan_one(
    path: Path,
    by_series: dict[str, dict[str, InstanceHeader]],
    duplicates: dict[str, int],
    unreadable: list[tuple[str, str]],
) -> None:
    try:
        inst = read_header(path)
    except InputError as exc:
        unreadable.append((exc.reason, exc.detail))
        return
    except OSError as exc:
        unreadable.append((R.UNREADABLE, f"{type(exc).__name__}: {exc.strerror or exc}"))
        return
    if inst is None:
        return
    series = by_series.setdefault(inst.series_uid, {})
    # The same SOP Instance UID twice (a PACS re-send): keep the first in path order.
    if inst.sop_instance_uid in series:
        duplicates[inst.series_uid] = duplicates.get(inst.series_uid, 0) + 1
        return
    series[inst.sop_instance_uid] = inst
