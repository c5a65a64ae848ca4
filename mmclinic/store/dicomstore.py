"""DICOM instance storage: parse uploaded bytes, write them durably under data_dir, register the rows."""

from __future__ import annotations

import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from mmclinic.case import sha256_bytes
from mmclinic.errors import ConflictError, InputError
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


def _uid(ds: object, keyword: str) -> str:
    value = str(getattr(ds, keyword, "") or "").strip()
    if not value or len(value) > _UID_MAX or not all(c.isdigit() or c == "." for c in value):
        raise InputError("dicom.missing_uid", f"{keyword} is missing or not a valid UID")
    return value


def parse_instance(data: bytes) -> ParsedInstance:
    """Read just enough of a DICOM Part 10 file to file it; InputError if it is not one."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if len(data) < 132:
        raise InputError("dicom.unreadable", "file is too short to be DICOM")
    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=False)
    except InvalidDicomError as exc:
        raise InputError("dicom.unreadable", "not a DICOM Part 10 file") from exc
    except Exception as exc:  # pydicom raises assorted errors on truncated or corrupt data
        raise InputError("dicom.unreadable", f"DICOM file cannot be parsed ({type(exc).__name__})") from exc
    return ParsedInstance(
        study_uid=_uid(ds, "StudyInstanceUID"),
        series_uid=_uid(ds, "SeriesInstanceUID"),
        sop_uid=_uid(ds, "SOPInstanceUID"),
        modality=str(getattr(ds, "Modality", "") or "")[:16],
        sha256=sha256_bytes(data),
        data=data,
    )


def instance_path(data_dir: Path, inst: ParsedInstance) -> Path:
    """Where an instance lives: hashed UIDs, so paths carry no identifiers and spread over folders."""
    study = sha256_bytes(inst.study_uid.encode())
    series = sha256_bytes(inst.series_uid.encode())[:32]
    sop = sha256_bytes(inst.sop_uid.encode())[:32]
    return data_dir / "dicom" / study[:2] / study[:32] / series / f"{sop}.dcm"


def write_durably(path: Path, data: bytes) -> None:
    """Write to a temporary file, fsync, rename into place, fsync the folder (a crash leaves no torn file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def register_instance(
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
) -> Instance:
    """Record one stored instance (also for the PACS listener). Same bytes again: no-op; changed bytes: conflict."""
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
        return inst
    inst = Instance(
        series_id=series.id, sop_uid=sop_uid, sha256=sha256, storage_path=storage_path, size_bytes=size_bytes
    )
    session.add(inst)
    session.flush()
    return inst


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
        register_instance(
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
