"""Pixel pass over the chosen series: read + hash each file once, decode frames, stack them in slice order."""

from __future__ import annotations

import hashlib
import io
import warnings
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.encaps import parse_fragments
from pydicom.filereader import read_dataset
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.utils import pixel_array
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from mmclinic.errors import InputError
from mmclinic_imaging_dicom import reasons as R
from mmclinic_imaging_dicom.geometry import SeriesGeometry
from mmclinic_imaging_dicom.headers import PIXEL_TAGS, InstanceHeader, us_value


@dataclass
class Volume:
    """Stored pixel values [Z, Y, X] (slice, row, column) with per-slice rescale, and provenance."""

    stored: np.ndarray
    slope: np.ndarray  # [Z]
    intercept: np.ndarray  # [Z]
    geometry: SeriesGeometry
    file_sha256: dict[str, str]  # SOP Instance UID → SHA-256 of the file
    decoders: dict[str, str]  # transfer syntax UID → decoder plugin used

    def hu(self) -> np.ndarray:
        """Hounsfield units, float32 [Z, Y, X]."""
        out = self.stored.astype(np.float32)
        # The usual case (one rescale for the whole series) is two in-place scalar operations.
        if np.all(self.slope == self.slope[0]) and np.all(self.intercept == self.intercept[0]):
            out *= self.slope[0]
            out += self.intercept[0]
        else:
            out *= self.slope[:, None, None]
            out += self.intercept[:, None, None]
        return out


def _read_and_hash(path: Path) -> tuple[bytes, str]:
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


# Below this mean file size, reading and hashing take microseconds and handing them to threads only adds
# scheduling latency (which a busy host turns into milliseconds).
_THREADED_READ_MIN_BYTES = 256 * 1024


def _prefetch(paths: list[Path], threads: int) -> Iterator[tuple[bytes, str]]:
    """Files' bytes and SHA-256 in order, computed a few files ahead on worker threads (bounded memory)."""
    if threads <= 0:
        yield from map(_read_and_hash, paths)
        return
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ct-read") as pool:
        pending: deque[Future[tuple[bytes, str]]] = deque()
        it = iter(paths)
        for path in it:
            pending.append(pool.submit(_read_and_hash, path))
            if len(pending) >= 2 * threads:
                break
        while pending:
            yield pending.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                pending.append(pool.submit(_read_and_hash, nxt))


def _attach_pixels(inst: InstanceHeader, data: bytes) -> None:
    """Put the pixel data element into the header dataset, parsing only the bytes from its offset on."""
    ds = inst.dataset
    pix = inst.pixel
    if pix is None:
        raise InputError(R.NO_PIXEL_DATA, "instance has no PixelData element")
    if len(data) != inst.size:
        raise InputError(R.UNREADABLE, "file changed between the header and the pixel pass")
    if pix.offset < 0:  # deflated: re-read the whole dataset through pydicom's inflater
        try:
            full = dcmread(io.BytesIO(data))
        except Exception as exc:
            raise InputError(R.UNREADABLE, f"deflated dataset: {R.describe(exc)}") from exc
        for tag in PIXEL_TAGS:
            if tag in full:
                ds[tag] = full[tag]
                return
        raise InputError(R.NO_PIXEL_DATA, "instance has no PixelData element")
    implicit, little = ds.original_encoding
    if not pix.encapsulated:
        # Native data: the header pass already knows where the value lies; wrap it as pydicom would.
        start = pix.offset + pix.header_len
        vr = None if implicit else data[pix.offset + 4 : pix.offset + 6].decode("ascii")
        tag = int.from_bytes(data[pix.offset : pix.offset + 2], "little" if little else "big") << 16
        tag |= int.from_bytes(data[pix.offset + 2 : pix.offset + 4], "little" if little else "big")
        ds[tag] = RawDataElement(
            BaseTag(tag), vr, pix.length, data[start : start + pix.length], start, bool(implicit), bool(little)
        )
        return
    fp = io.BytesIO(data)
    fp.seek(pix.offset)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rest = read_dataset(
                fp, bool(implicit), bool(little), stop_when=lambda tag, vr, length: tag not in PIXEL_TAGS
            )
    except EOFError as exc:
        raise InputError(R.TRUNCATED, f"pixel data ends early: {R.describe(exc)}") from exc
    except Exception as exc:
        raise InputError(R.UNREADABLE, f"pixel data element: {R.describe(exc)}") from exc
    for tag in PIXEL_TAGS:
        if tag in rest:
            ds[tag] = rest.get_item(tag)
            return
    # The header pass saw the element start, so pydicom dropping it means the file ended inside it
    # (encapsulated data without its sequence delimiter).
    raise InputError(R.TRUNCATED, "file ends inside the encapsulated pixel data")


def _check_fragments(inst: InstanceHeader) -> None:
    pix = inst.pixel
    if pix is None or not pix.encapsulated or inst.frames <= 1:
        return
    try:
        n_fragments, _ = parse_fragments(inst.dataset.PixelData)
    except Exception as exc:  # broken item tags inside the encapsulated value
        raise InputError(R.UNREADABLE, f"encapsulated pixel data: {R.describe(exc)}") from exc
    # Fewer fragments than frames is impossible: every frame needs at least one fragment (PS3.5 A.4).
    if n_fragments < inst.frames:
        raise InputError(R.PIXEL_LENGTH_MISMATCH, f"{n_fragments} fragments for {inst.frames} frames")


_NATIVE = frozenset({str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian), str(ExplicitVRBigEndian)})


def _decode_native(inst: InstanceHeader, data: bytes) -> np.ndarray | None:
    """Uncompressed greyscale frames straight from the file bytes, or ``None`` to let pydicom decode.

    Same result as pydicom's native decoder (values masked to BitsStored, sign-extended when signed);
    skips its per-call set-up, which costs more than the copy itself for small slices.
    """
    pix, ds = inst.pixel, inst.dataset
    if pix is None or pix.offset < 0 or pix.encapsulated or inst.transfer_syntax not in _NATIVE:
        return None
    allocated = inst.bits_allocated
    stored = us_value(ds, 0x00280101, allocated)
    signed = us_value(ds, 0x00280103, 0) == 1
    high_bit = us_value(ds, 0x00280102, stored - 1)
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if (
        inst.samples_per_pixel != 1
        or allocated not in (8, 16, 32)
        or not 0 < stored <= allocated
        or high_bit != stored - 1
        or photometric not in ("MONOCHROME1", "MONOCHROME2")
    ):
        return None
    count = inst.frames * inst.rows * inst.cols
    _, little = ds.original_encoding
    dtype = np.dtype(f"{'<' if little else '>'}{'i' if signed else 'u'}{allocated // 8}")
    start = pix.offset + pix.header_len
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=start).astype(dtype.newbyteorder("="))
    if stored < allocated:
        shift = allocated - stored
        if signed:
            arr <<= shift
            arr >>= shift  # arithmetic shift on a signed dtype sign-extends
        else:
            arr &= (1 << stored) - 1
    return arr.reshape(inst.frames, inst.rows, inst.cols)


def _decode(inst: InstanceHeader, plugins: list[str]) -> tuple[np.ndarray, str]:
    """All frames of an instance as [frames, rows, cols] stored values."""
    ts = UID(inst.transfer_syntax)
    available = get_decoder(ts).available_plugins if ts.is_compressed else ()
    chosen = next((p for p in plugins if p in available), "")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pixel_array(inst.dataset, decoding_plugin=chosen)
    except EOFError as exc:
        raise InputError(R.TRUNCATED, f"pixel data ends early: {R.describe(exc)}") from exc
    except InputError:
        raise
    except Exception as exc:  # decoder libraries raise anything (RuntimeError, ValueError, struct.error, ...)
        raise InputError(R.UNREADABLE, f"pixel decode ({ts.name}): {R.describe(exc)}") from exc
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.shape != (inst.frames, inst.rows, inst.cols):
        raise InputError(
            R.PIXEL_LENGTH_MISMATCH, f"decoded shape {arr.shape} != ({inst.frames}, {inst.rows}, {inst.cols})"
        )
    return arr, chosen or "pydicom-default"


def read_volume(geometry: SeriesGeometry, decoding_plugins: list[str], io_threads: int) -> Volume:
    """Decode the chosen series into one array in slice order; every file read (and hashed) exactly once."""
    instances: list[InstanceHeader] = []
    where: dict[int, list[tuple[int, int]]] = {}  # id(instance) → [(frame, slice k)]
    for k, sl in enumerate(geometry.slices):
        if id(sl.instance) not in where:
            where[id(sl.instance)] = []
            instances.append(sl.instance)
        where[id(sl.instance)].append((sl.frame, k))
    out: np.ndarray | None = None
    hashes: dict[str, str] = {}
    decoders: dict[str, str] = {}
    mean_size = sum(i.size for i in instances) / max(len(instances), 1)
    threads = io_threads if mean_size >= _THREADED_READ_MIN_BYTES else 0
    for inst, (data, digest) in zip(instances, _prefetch([i.path for i in instances], threads), strict=True):
        hashes[inst.sop_instance_uid] = digest
        try:
            fast = _decode_native(inst, data)
            if fast is not None:
                arr, used = fast, "numpy"
            else:
                _attach_pixels(inst, data)
                _check_fragments(inst)
                arr, used = _decode(inst, decoding_plugins)
        finally:
            for tag in PIXEL_TAGS:  # do not keep pixel bytes alive in the header dataset
                if tag in inst.dataset:
                    del inst.dataset[tag]
        decoders[inst.transfer_syntax] = used
        native = arr.dtype.newbyteorder("=")  # big-endian data decodes to a '>' dtype; torch wants native
        if out is None:
            out = np.empty((len(geometry.slices), geometry.rows, geometry.cols), dtype=native)
        elif native != out.dtype:
            out = out.astype(np.result_type(out.dtype, native))
        for frame, k in where[id(inst)]:
            out[k] = arr[frame]
    assert out is not None
    slope = np.array([s.slope for s in geometry.slices], dtype=np.float32)
    intercept = np.array([s.intercept for s in geometry.slices], dtype=np.float32)
    return Volume(out, slope, intercept, geometry, hashes, decoders)
