"""Case submission (validated, fingerprinted, idempotent) and turning a stored case back into a ``Case``."""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mmclinic.case import IMAGING, NOTES, TABULAR, Case, NoteRef, StudyRef, sha256_bytes, stable_hash
from mmclinic.errors import InputError, NotFoundError
from mmclinic.store.models import CaseRow, Instance, Job, Note, Patient, Series, Study, TabularRecord
from mmclinic.store.users import validate_site

MAX_NOTE_BYTES = 1 << 20
MAX_NOTES = 64
MAX_TABULAR_FIELDS = 256
_PSEUDO_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_FIELD_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
Scalar = str | int | float | bool | None


@dataclass(frozen=True)
class NoteInput:
    """A note as submitted."""

    text: bytes
    note_type: str = "clinical_note"
    note_date: date | None = None


@dataclass(frozen=True)
class CaseInput:
    """Everything a submission carries; ``study_uid`` refers to an already ingested study."""

    patient_id: str
    site: str
    study_uid: str | None = None
    notes: tuple[NoteInput, ...] = ()
    tabular: dict[str, Scalar] | None = None


@dataclass
class SubmitResult:
    """The case and job a submission maps to; ``duplicate`` when the same inputs were already submitted."""

    case: CaseRow
    job: Job
    duplicate: bool


def _validate(inp: CaseInput) -> None:
    validate_site(inp.site)
    if not _PSEUDO_RE.match(inp.patient_id):
        raise InputError("input.bad_patient_id", "patient_id must be a pseudonymous id of 1-128 safe characters")
    if inp.study_uid is None and not inp.notes and not inp.tabular:
        raise InputError("input.no_modalities", "a case needs a study, a note or a tabular record")
    if len(inp.notes) > MAX_NOTES:
        raise InputError("notes.too_many", f"at most {MAX_NOTES} notes per case")
    for note in inp.notes:
        if not note.text.strip():
            raise InputError("notes.empty", "a note is empty")
        if len(note.text) > MAX_NOTE_BYTES:
            raise InputError("notes.too_large", f"a note exceeds {MAX_NOTE_BYTES} bytes")
    if inp.tabular is not None:
        if len(inp.tabular) > MAX_TABULAR_FIELDS:
            raise InputError("tabular.too_many_fields", f"at most {MAX_TABULAR_FIELDS} fields")
        for key, value in inp.tabular.items():
            if not _FIELD_RE.match(key):
                raise InputError("tabular.bad_field_name", "field names must be identifiers of at most 64 characters")
            if isinstance(value, float) and not math.isfinite(value):
                raise InputError("tabular.non_finite", "numeric values must be finite")
            if isinstance(value, str) and len(value) > 1024:
                raise InputError("tabular.value_too_long", "text values are limited to 1024 characters")


def _patient(session: Session, site: str, pseudo_id: str) -> Patient:
    row = session.scalar(select(Patient).where(Patient.site == site, Patient.pseudo_id == pseudo_id))
    if row is None:
        row = Patient(site=site, pseudo_id=pseudo_id)
        try:
            with session.begin_nested():
                session.add(row)
        except IntegrityError:  # a concurrent submission created it
            row = session.scalars(select(Patient).where(Patient.site == site, Patient.pseudo_id == pseudo_id)).one()
    return row


def study_for_site(session: Session, study_uid: str, site: str) -> Study:
    """An ingested study of ``site``; another site's study is reported as absent, not forbidden."""
    study = session.scalar(select(Study).where(Study.study_uid == study_uid))
    if study is None or study.site != site:
        raise NotFoundError("not_found.study", "no ingested study with this StudyInstanceUID")
    return study


def fingerprint(session: Session, inp: CaseInput, study: Study | None) -> str:
    """SHA-256 over every input: instance hashes, note hashes and types, record values, patient and site."""
    instances: list[list[str]] = []
    if study is not None:
        rows = session.execute(
            select(Instance.sop_uid, Instance.sha256).join(Series).where(Series.study_id == study.id)
        ).all()
        instances = sorted([r[0], r[1]] for r in rows)
    return stable_hash(
        {
            "site": inp.site,
            "patient": inp.patient_id,
            "study": instances,
            "notes": [[sha256_bytes(n.text), n.note_type, n.note_date] for n in inp.notes],
            "tabular": inp.tabular,
        }
    )


def submit(
    session: Session, inp: CaseInput, model: str, submitted_by: int | None = None, max_attempts: int = 3
) -> SubmitResult:
    """Store a case and queue its job, or return the existing ones for the same inputs and model."""
    _validate(inp)
    study = study_for_site(session, inp.study_uid, inp.site) if inp.study_uid else None
    if study is not None and not session.scalar(select(Instance.id).join(Series).where(Series.study_id == study.id)):
        raise InputError("dicom.empty_study", "the study has no stored instances")
    fp = fingerprint(session, inp, study)
    existing = session.scalar(select(CaseRow).where(CaseRow.input_fingerprint == fp))
    duplicate = existing is not None
    if existing is None:
        patient = _patient(session, inp.site, inp.patient_id)
        row = CaseRow(
            case_key=uuid.uuid4().hex,
            patient_id=patient.id,
            study_id=study.id if study else None,
            site=inp.site,
            input_fingerprint=fp,
            submitted_by=submitted_by,
        )
        try:
            with session.begin_nested():
                session.add(row)
                session.flush()
                for n in inp.notes:
                    session.add(
                        Note(
                            case_id=row.id,
                            sha256=sha256_bytes(n.text),
                            note_type=n.note_type[:64],
                            note_date=n.note_date,
                            data=n.text,
                            source="api",
                        )
                    )
                if inp.tabular is not None:
                    session.add(TabularRecord(case_id=row.id, sha256=stable_hash(inp.tabular), values=inp.tabular))
                session.flush()
            existing = row
        except IntegrityError:  # the same inputs were submitted concurrently (PostgreSQL)
            existing = session.scalars(select(CaseRow).where(CaseRow.input_fingerprint == fp)).one()
            duplicate = True
    job = session.scalar(select(Job).where(Job.case_id == existing.id, Job.model == model))
    if job is None:
        job = Job(case_id=existing.id, model=model, state="queued", attempts=0, max_attempts=max_attempts)
        session.add(job)
        session.flush()
    return SubmitResult(existing, job, duplicate)


def to_case(session: Session, row: CaseRow) -> Case:
    """The ``mmclinic.case.Case`` the engine consumes, rebuilt from stored rows and files."""
    inputs: dict[str, Any] = {}
    if row.study_id is not None:
        paths = session.scalars(
            select(Instance.storage_path).join(Series).where(Series.study_id == row.study_id).order_by(Instance.id)
        ).all()
        inputs[IMAGING] = StudyRef(files=tuple(Path(p) for p in paths))
    if row.notes:
        inputs[NOTES] = [
            NoteRef(data=n.data, note_date=n.note_date, note_type=n.note_type, source=n.source) for n in row.notes
        ]
    if row.records:
        inputs[TABULAR] = dict(row.records[0].values)
    return Case(case_id=row.case_key, patient_id=row.patient.pseudo_id, site=row.site, inputs=inputs)
