"""Study-complete trigger: a quiet period after the last instance, series selection, then a case and a job."""

from __future__ import annotations

import logging
import re
import threading
import time
from datetime import UTC
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from mmclinic.case import IMAGING, StudyRef, sha256_bytes
from mmclinic.errors import InputError, MmclinicError
from mmclinic.logs import event
from mmclinic.pacs.receive import listener_actor
from mmclinic.store.audit import record
from mmclinic.store.cases import CaseInput, NoteInput, submit
from mmclinic.store.db import transaction
from mmclinic.store.models import CaseRow, Instance, Patient, Series, Study

log = logging.getLogger(__name__)
_PSEUDO_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class StudyTracker:
    """Last-instance times of studies still receiving; ``due`` returns those quiet for long enough."""

    def __init__(self, quiet_s: float) -> None:
        self.quiet_s = quiet_s
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def touch(self, study_uid: str, at: float | None = None) -> None:
        with self._lock:
            self._last[study_uid] = time.monotonic() if at is None else at

    def due(self, now: float | None = None) -> list[str]:
        """Studies quiet for ``quiet_s``; they leave the tracker (a new instance puts them back)."""
        t = time.monotonic() if now is None else now
        with self._lock:
            ready = [uid for uid, last in self._last.items() if t - last >= self.quiet_s]
            for uid in ready:
                del self._last[uid]
        return ready

    def waiting(self) -> list[str]:
        with self._lock:
            return sorted(self._last)

    def recover(self, factory: sessionmaker[Session]) -> int:
        """After a restart: studies with instances but no case yet, timed by their newest instance."""
        with factory() as s:
            rows = s.execute(
                select(Study.study_uid, Instance.created_at)
                .join(Series, Series.study_id == Study.id)
                .join(Instance, Instance.series_id == Series.id)
                .where(~select(CaseRow.id).where(CaseRow.study_id == Study.id).exists())
            ).all()
        newest: dict[str, float] = {}
        for uid, created in rows:
            newest[uid] = max(newest.get(uid, 0.0), created.replace(tzinfo=created.tzinfo or UTC).timestamp())
        offset = time.monotonic() - time.time()  # wall clock → monotonic
        for uid, ts in newest.items():
            self.touch(uid, ts + offset)
        return len(newest)


def pseudonymous_patient(patient_id: str) -> str:
    """The PACS PatientID as the store's pseudonymous id; an id with unusual characters is hashed."""
    pid = patient_id.strip()
    return pid if _PSEUDO_RE.match(pid) else f"h:{sha256_bytes(pid.encode())[:32]}"


def _patient_id_of(path: Path) -> str:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    except Exception as exc:
        raise InputError("dicom.unreadable", f"stored instance cannot be read ({type(exc).__name__})") from exc
    return str(getattr(ds, "PatientID", "") or "")


def select_series(paths: list[Path], model: str) -> dict[str, Any]:
    """Run the imaging plugin's series selection (via the registry); InputError when no series qualifies."""
    from mmclinic.plugin_api import TaskSpec
    from mmclinic.registry import get_registry

    reg = get_registry()
    plugin: Any = reg.modality_for(IMAGING)
    try:
        spec = reg.get("task", model).spec()  # type: ignore[attr-defined]
    except MmclinicError:  # a run folder or third-party model: the default geometry is good enough to select
        spec = TaskSpec(name=model, required_modalities=(), optional_modalities=(IMAGING,), labels=())
    ref = StudyRef(files=tuple(paths))
    # Headers only when the plugin offers it: the worker decodes the pixels once, later.
    if hasattr(plugin, "select_series"):
        return dict(plugin.select_series(ref, spec))
    return dict(plugin.load(ref, spec).summary)


def _latest_inputs(s: Session, site: str, pseudo_id: str) -> tuple[tuple[NoteInput, ...], dict[str, Any] | None]:
    """Notes and record of the patient's most recent case that has them (submitted through the API)."""
    patient = s.scalar(select(Patient).where(Patient.site == site, Patient.pseudo_id == pseudo_id))
    if patient is None:
        return (), None
    notes: tuple[NoteInput, ...] = ()
    tabular: dict[str, Any] | None = None
    for case in s.scalars(select(CaseRow).where(CaseRow.patient_id == patient.id).order_by(CaseRow.id.desc())):
        if not notes and case.notes:
            notes = tuple(NoteInput(n.data, n.note_type, n.note_date) for n in case.notes)
        if tabular is None and case.records:
            tabular = dict(case.records[0].values)
        if notes and tabular is not None:
            break
    return notes, tabular


def complete_study(factory: sessionmaker[Session], study_uid: str, model: str) -> int | None:
    """Select a series, create the case (with the patient's notes/records when known) and queue its job.

    Returns the job id, or ``None`` when the study has no usable series (audited with the reason).
    Re-running it for an unchanged study returns the same job (submission is idempotent).
    """
    with factory() as s:
        study = s.scalar(select(Study).where(Study.study_uid == study_uid))
        if study is None:
            return None
        site = study.site
        paths = [
            Path(p)
            for p in s.scalars(
                select(Instance.storage_path).join(Series).where(Series.study_id == study.id).order_by(Instance.id)
            )
        ]
    resource = f"study/{sha256_bytes(study_uid.encode())[:16]}"
    try:
        summary = select_series(paths, model)
        pseudo = pseudonymous_patient(_patient_id_of(paths[0]))
    except InputError as exc:
        event(log, "pacs.study_rejected", level=logging.WARNING, study=resource, reason=exc.reason)
        with transaction(factory) as s:
            record(s, listener_actor(site, "trigger"), "pacs.study_complete", resource, exc.reason)
        return None
    with transaction(factory) as s:
        notes, tabular = _latest_inputs(s, site, pseudo)
        res = submit(
            s, CaseInput(patient_id=pseudo, site=site, study_uid=study_uid, notes=notes, tabular=tabular), model
        )
        record(s, listener_actor(site, "trigger"), "case.create", f"case/{res.case.case_key}", "ok")
        job_id = res.job.id
    event(
        log,
        "pacs.study_complete",
        study=resource,
        job=job_id,
        series=len(summary.get("series", [])),
        notes=len(notes),
        tabular=tabular is not None,
    )
    return job_id
