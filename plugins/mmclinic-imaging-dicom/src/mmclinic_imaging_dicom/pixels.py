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
from mmclinic.errors import InputError
from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.encaps import parse_fragments
from pydicom.filereader import read_dataset
from pydicom.pixels import get_decoder, pixel_array
from pydicom.tag import BaseTag
from pydicom.uid import UID

from mmclinic_imaging_dicom import reasons as R
from mmclinic_imaging_dicom.geometry import SeriesGeometry
from mmclinic_imaging_dicom.headers import PIXEL_TAGS, InstanceHeader


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
        out *= self.slope[:, None, None]
        out += self.intercept[:, None, None]
        return out


def _read_and_hash(path: Path) -> tuple[bytes, str]:
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def _prefetch(paths: list[Path], threads: int) -> Iterator[tuple[bytes, str]]:
    """Files' bytes and SHA-256 in order, computed a few files ahead on worker threads (bounded memory)."""
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
            raise InputError(R.UNREADABLE, f"deflated dataset: {type(exc).__name__}: {exc}") from exc
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
        raise InputError(R.TRUNCATED, f"pixel data ends early: {exc}") from exc
    except Exception as exc:
        raise InputError(R.UNREADABLE, f"pixel data element: {type(exc).__name__}: {exc}") from exc
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
        raise InputError(R.UNREADABLE, f"encapsulated pixel data: {type(exc).__name__}: {exc}") from exc
    # Fewer fragments than frames is impossible: every frame needs at least one fragment (PS3.5 A.4).
    if n_fragments < inst.frames:
        raise InputError(R.PIXEL_LENGTH_MISMATCH, f"{n_fragments} fragments for {inst.frames} frames")


def _decode(inst: InstanceHeader, plugin: str) -> tuple[np.ndarray, str]:
    """All frames of an instance as [frames, rows, cols] stored values."""
    ts = UID(inst.transfer_syntax)
    chosen = ""
    if ts.is_compressed and plugin and plugin in get_decoder(ts).available_plugins:
        chosen = plugin
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = pixel_array(inst.dataset, decoding_plugin=chosen)
    except EOFError as exc:
        raise InputError(R.TRUNCATED, f"pixel data ends early: {exc}") from exc
    except InputError:
        raise
    except Exception as exc:  # decoder libraries raise anything (RuntimeError, ValueError, struct.error, ...)
        raise InputError(R.UNREADABLE, f"pixel decode ({ts.name}): {type(exc).__name__}: {exc}") from exc
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.shape != (inst.frames, inst.rows, inst.cols):
        raise InputError(
            R.PIXEL_LENGTH_MISMATCH, f"decoded shape {arr.shape} != ({inst.frames}, {inst.rows}, {inst.cols})"
        )
    return arr, chosen or "pydicom-default"


def read_volume(geometry: SeriesGeometry, decoding_plugin: str, io_threads: int) -> Volume:
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
    for inst, (data, digest) in zip(instances, _prefetch([i.path for i in instances], io_threads), strict=True):
        hashes[inst.sop_instance_uid] = digest
        try:
            _attach_pixels(inst, data)
            _check_fragments(inst)
            arr, used = _decode(inst, decoding_plugin)
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
