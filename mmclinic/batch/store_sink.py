"""Write a cohort run's predictions into the store (``--db URL``) through the store's repository functions.

Idempotent like every store write: the case is found by its input fingerprint and the prediction by
(input fingerprint, weights SHA-256), so writing the same run twice (or resuming it) adds nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmclinic.case import IMAGING, NOTES, TABULAR, Case, NoteRef, Prediction, StudyRef
from mmclinic.errors import InputError, MmclinicError
from mmclinic.logs import event

log = logging.getLogger(__name__)


@dataclass
class StoreStats:
    """What a store write did."""

    created: int = 0
    existing: int = 0
    failed: dict[str, int] | None = None


def prediction_from_dict(d: dict[str, Any]) -> Prediction:
    """Rebuild a ``Prediction`` from its ``to_dict()`` form (kept as a name for the batch journal's callers)."""
    return Prediction.from_dict(d)


def _study_files(ref: StudyRef) -> list[Path]:
    if ref.folder is not None:
        return sorted(p for p in ref.folder.rglob("*") if p.is_file())
    return list(ref.files)


def write_to_store(url: str, data_dir: Path, model: str, scored: Sequence[tuple[Case, dict[str, Any]]]) -> StoreStats:
    """Ingest each scored case (study files, notes, record) and save its prediction; one transaction per case."""
    from mmclinic.store.audit import Actor, record
    from mmclinic.store.cases import CaseInput, NoteInput, submit
    from mmclinic.store.db import create_db_engine, session_factory, transaction, upgrade
    from mmclinic.store.dicomstore import ingest_files
    from mmclinic.store.models import utcnow
    from mmclinic.store.predictions import save_prediction

    engine = create_db_engine(url)
    upgrade(engine)
    factory = session_factory(engine)
    stats = StoreStats(failed={})
    assert stats.failed is not None
    try:
        for case, pred_dict in scored:
            pred = prediction_from_dict(pred_dict)
            actor = Actor(name="batch:score", role="system", site=case.site, client="cli")
            try:
                with transaction(factory) as s:
                    study_uid = None
                    ref = case.inputs.get(IMAGING)
                    if isinstance(ref, StudyRef):
                        blobs = [p.read_bytes() for p in _study_files(ref)]
                        study_uid = ingest_files(s, data_dir, case.site, blobs).study_uid
                    notes: list[NoteRef] = case.inputs.get(NOTES) or []
                    tab = case.inputs.get(TABULAR)
                    inp = CaseInput(
                        patient_id=case.patient_id,
                        site=case.site,
                        study_uid=study_uid,
                        notes=tuple(NoteInput(n.data, n.note_type, n.note_date) for n in notes),
                        tabular=dict(tab) if isinstance(tab, dict) else None,
                    )
                    sub = submit(s, inp, model)
                    row, created = save_prediction(s, sub.case, pred)
                    # The prediction is already made: a queued job is done (a running one finds it and reuses it).
                    if sub.job.state == "queued":
                        sub.job.state, sub.job.prediction_id = "done", row.id
                        sub.job.finished_at = sub.job.updated_at = utcnow()
                    action = "prediction.create" if created else "prediction.reuse"
                    record(s, actor, action, f"prediction/{row.id}")
                stats.created += created
                stats.existing += not created
            except (InputError, OSError) as exc:
                # Data the store refuses (e.g. an id it does not accept) must not stop the others.
                reason = exc.reason if isinstance(exc, MmclinicError) else "store.input_unreadable"
                stats.failed[reason] = stats.failed.get(reason, 0) + 1
                event(log, "batch.store_failed", level=logging.WARNING, reason=reason)
    finally:
        engine.dispose()
    return stats
