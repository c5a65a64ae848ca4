"""DICOM instance storage: parse uploaded bytes, write them durably under data_dir, register the rows."""

from __future__ import annotations

import ctypes
import io
import os
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from mmclinic.case import sha256_bytes
from mmclinic.durable import fsync_path
from mmclinic.errors import ConflictError, InputError
from mmclinic.store import dicomheader
from mmclinic.store.models import Instance, Series, Study

_UID_MAX = 64


@dataclass(frozen=True)
class ParsedInstance:
    """The identifying facts of one DICOM instance (no patient identifiers are read)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    modality: str
    sha256: str
    data: bytes
    sop_class: str = ""  # SOP Class UID (dataset, else the file meta's), for the PACS context check


def _uid(value: object, keyword: str) -> str:
    value = str(value or "").strip()
    if not value or len(value) > _UID_MAX or not all(c.isdigit() or c == "." for c in value):
        raise InputError("dicom.missing_uid", f"{keyword} is missing or not a valid UID")
    return value


def parse_instance(data: bytes) -> ParsedInstance:
    """Read just enough of a DICOM Part 10 file to file it; InputError if it is not one.

    A clean file is read by ``dicomheader`` (about a tenth of the time); anything it does not
    vouch for is read by pydicom, which then decides whether and why the file is refused.
    """
    if len(data) < 132:
        raise InputError("dicom.unreadable", "file is too short to be DICOM")
    found = dicomheader.read_identifiers(data)
    values = _read_with_pydicom(data) if found is None else found
    return ParsedInstance(
        study_uid=_uid(values.get(dicomheader.STUDY_INSTANCE), "StudyInstanceUID"),
        series_uid=_uid(values.get(dicomheader.SERIES_INSTANCE), "SeriesInstanceUID"),
        sop_uid=_uid(values.get(dicomheader.SOP_INSTANCE), "SOPInstanceUID"),
        modality=str(values.get(dicomheader.MODALITY) or "")[:16],
        sha256=sha256_bytes(data),
        data=data,
        sop_class=str(values.get(dicomheader.SOP_CLASS) or values.get(dicomheader.MEDIA_SOP_CLASS) or ""),
    )


def _read_with_pydicom(data: bytes) -> dict[int, object]:
    """The same values as ``dicomheader.read_identifiers``, through pydicom; InputError when it cannot read the file."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=False)
        meta = getattr(ds, "file_meta", None)
        # Inside the try: pydicom converts a value when it is first read, and a corrupt VR or
        # length raises only then.
        values: dict[int, object] = {tag: getattr(ds, kw, None) for tag, kw in dicomheader.KEYWORDS.items()}
        values[dicomheader.MEDIA_SOP_CLASS] = getattr(meta, "MediaStorageSOPClassUID", None)
        return values
    except InvalidDicomError as exc:
        raise InputError("dicom.unreadable", "not a DICOM Part 10 file") from exc
    except Exception as exc:  # pydicom raises assorted errors on truncated or corrupt data
        raise InputError("dicom.unreadable", f"DICOM file cannot be parsed ({type(exc).__name__})") from exc


def instance_path(data_dir: Path, inst: ParsedInstance) -> Path:
    """Where an instance lives: hashed UIDs, so paths carry no identifiers and spread over folders."""
    study = sha256_bytes(inst.study_uid.encode())
    series = sha256_bytes(inst.series_uid.encode())[:32]
    sop = sha256_bytes(inst.sop_uid.encode())[:32]
    return data_dir / "dicom" / study[:2] / study[:32] / series / f"{sop}.dcm"


def _fsync_together(fd: int, folders: list[Path]) -> None:
    """fsync ``fd`` here and each folder on a pool thread at the same time; returns when all are done."""
    try:
        pending = [io_pool().submit(fsync_path, d) for d in dict.fromkeys(folders)]
    except RuntimeError:  # interpreter shutting down: no new pool work, do it in turn
        os.fsync(fd)
        for d in dict.fromkeys(folders):
            fsync_path(d)
        return
    try:
        os.fsync(fd)
    finally:
        for f in pending:
            f.result()  # waits; re-raises a folder's fsync error


def io_pool() -> ThreadPoolExecutor:
    """Threads for durable-write work beside the caller's: the folder fsyncs of `_fsync_together`."""
    global _IO_POOL
    with _IO_POOL_LOCK:
        if _IO_POOL is None:
            _IO_POOL = ThreadPoolExecutor(max_workers=8, thread_name_prefix="durable-io")
        return _IO_POOL


def _load_sync_file_range() -> Callable[[int, bool], bool] | None:
    """``(fd, wait) -> done`` via Linux ``sync_file_range``, or None where the call does not exist.

    ``wait=False`` only starts writing the file's dirty pages out and returns at once;
    ``wait=True`` writes what is left and returns when every page is on the device.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    func.restype = ctypes.c_int
    start = 0x2  # SYNC_FILE_RANGE_WRITE
    whole = 0x1 | 0x2 | 0x4  # SYNC_FILE_RANGE_WAIT_BEFORE | _WRITE | _WAIT_AFTER

    def push(fd: int, wait: bool) -> bool:
        return int(func(fd, 0, 0, whole if wait else start)) == 0

    return push


_IO_POOL: ThreadPoolExecutor | None = None
_IO_POOL_LOCK = threading.Lock()
_SYNC_FILE_RANGE = _load_sync_file_range()


def _start_push(fd: int) -> None:
    """Start writing a file's data out to the device, without waiting (a no-op where that is not possible)."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, False)


def _push_data(fd: int) -> None:
    """Put a file's data on the device (no metadata, no cache flush) so that a later rename never exposes it torn.

    ``sync_file_range`` writes the pages out and waits, without a journal commit. The rename that
    follows is journalled after the blocks it points to were written, and a journal commit flushes
    the device cache before its commit record, so after a crash the final name holds either nothing
    or the whole file. Durability itself still comes from the fsyncs in ``StagedFile.publish``.
    Where the call is missing (or fails), ``fdatasync`` gives the same ordering at the cost of a commit.
    """
    if _SYNC_FILE_RANGE is None or not _SYNC_FILE_RANGE(fd, True):
        os.fdatasync(fd)


def _make_dirs(folder: Path) -> list[Path]:
    """``mkdir -p``; returns the folders it created, outermost first (their parents need an fsync)."""
    if folder.is_dir():
        return []
    missing = [folder, *(p for p in folder.parents if not p.is_dir())]
    folder.mkdir(parents=True, exist_ok=True)
    return list(reversed(missing))


class StagedFile:
    """Bytes written under a temporary name in ``folder``, not yet visible at their final path.

    Splitting ``write_durably`` in two lets a caller have the bytes written out while it does other
    work (the PACS receiver parses and checks the database meanwhile) and make them visible only
    once it knows it may. The constructor copies the bytes to the page cache and starts the
    device write without waiting; ``publish`` waits for what is left. No thread is involved, so
    the write-out never waits for the GIL behind the caller's own work. ``folder`` must be on the
    file system of the final path (``publish`` renames).
    """

    def __init__(self, data: bytes, folder: Path) -> None:
        self._new_dirs = _make_dirs(folder)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".part")
        self._fd: int | None = fd
        self._tmp = Path(tmp)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            _start_push(fd)
        except BaseException:
            self.discard()
            raise

    def publish(self, path: Path) -> None:
        """Rename to ``path``; returns once the file *and* its folder entry are durable (fsync'ed).

        The fsyncs run at the same time (folders on pool threads): on a journalling file system
        they all wait for the same journal commit, where one after the other costs a commit and a
        device cache flush each. The guarantee is that of sequential fsyncs, since this returns
        only after all have returned. Folders created on the way get their parent fsync'ed too.
        """
        if self._fd is None:
            raise RuntimeError("staged file was already published or discarded")
        try:
            _push_data(self._fd)  # the data before the name (see _push_data); started at construction
            new_dirs = self._new_dirs + _make_dirs(path.parent)
            os.replace(self._tmp, path)
        except BaseException:
            self.discard()
            raise
        fd, self._fd = self._fd, None
        try:
            _fsync_together(fd, [path.parent, *(d.parent for d in new_dirs)])
        finally:
            os.close(fd)

    def discard(self) -> None:
        """Drop the temporary file (after a conflict or an error); nothing becomes visible."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            self._tmp.unlink(missing_ok=True)


def write_durably(path: Path, data: bytes) -> None:
    """Write to a temporary file, rename into place, fsync file + folder (a crash leaves no torn file)."""
    StagedFile(data, path.parent).publish(path)


def record_instance(
    session: Session,
    site: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    modality: str,
    sha256: str,
    storage_path: str,
    size_bytes: int,
    patient_row_id: int | None = None,
) -> tuple[Instance, bool]:
    """Record one stored instance: ``(row, is_new)``. Same bytes again: no-op; changed bytes: conflict."""
    study = session.scalar(select(Study).where(Study.study_uid == study_uid))
    if study is None:
        study = Study(study_uid=study_uid, site=site, patient_id=patient_row_id)
        session.add(study)
        session.flush()
    elif study.site != site:
        raise ConflictError("conflict.study_uid", "this StudyInstanceUID is already registered")
    elif study.patient_id is None and patient_row_id is not None:
        study.patient_id = patient_row_id
    series = session.scalar(select(Series).where(Series.series_uid == series_uid))
    if series is None:
        series = Series(study_id=study.id, series_uid=series_uid, modality=modality)
        session.add(series)
        session.flush()
    elif series.study_id != study.id:
        raise ConflictError("conflict.series_uid", "this SeriesInstanceUID belongs to another study")
    inst = session.scalar(select(Instance).where(Instance.sop_uid == sop_uid))
    if inst is not None:
        if inst.sha256 != sha256 or inst.series_id != series.id:
            raise ConflictError("conflict.instance_changed", "an instance with this SOPInstanceUID has other bytes")
        return inst, False
    inst = Instance(
        series_id=series.id, sop_uid=sop_uid, sha256=sha256, storage_path=storage_path, size_bytes=size_bytes
    )
    session.add(inst)
    session.flush()
    return inst, True


def ingest_files(
    session: Session, data_dir: Path, site: str, blobs: list[bytes], patient_row_id: int | None = None
) -> Study:
    """Parse, store and register uploaded files of exactly one study; returns the study row."""
    if not blobs:
        raise InputError("dicom.no_files", "no DICOM files were uploaded")
    parsed = [parse_instance(b) for b in blobs]
    studies = {p.study_uid for p in parsed}
    if len(studies) != 1:
        raise InputError("dicom.multiple_studies", f"files belong to {len(studies)} studies; upload one study")
    for p in parsed:
        path = instance_path(data_dir, p)
        # Registering first means a conflict is detected before any file is overwritten.
        record_instance(
            session,
            site,
            p.study_uid,
            p.series_uid,
            p.sop_uid,
            p.modality,
            p.sha256,
            str(path),
            len(p.data),
            patient_row_id,
        )
        if not (path.is_file() and path.stat().st_size == len(p.data)):
            write_durably(path, p.data)
    study = session.scalar(select(Study).where(Study.study_uid == parsed[0].study_uid))
    assert study is not None
    return study
