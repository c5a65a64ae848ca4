"""Study-complete trigger → job → worker → SR in the outbox → C-STORE to the PACS (down, then up: exactly once)."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pydicom
from _support import dciodvfy_errors
from sqlalchemy import select

from mmclinic.pacs.service import PacsService
from mmclinic.pacs.sr import read_sr_findings
from mmclinic.pacs.testing import RecordingSCP, Store, dest, free_port, make_settings, scu_store
from mmclinic.store.cases import CaseInput, NoteInput, submit
from mmclinic.store.db import transaction
from mmclinic.store.models import CaseRow, Job, PredictionRow
from mmclinic.store.testing import FakeEngine
from mmclinic.store.worker import run_worker


def _work(store: Store) -> None:
    run_worker(store.factory, FakeEngine(), "w", poll_s=0.01, backoff_s=0.0, until_idle=True)


def test_quiet_period_then_case_job_sr_and_delivery_exactly_once(store: Store, study_files: list[Path]) -> None:
    pacs_port = free_port()
    settings = make_settings(store.data_dir, study_quiet_seconds=30.0, destinations=[dest(pacs_port)])
    svc = PacsService(settings, store.factory)
    svc.start()
    try:
        assert scu_store(svc.scp.port, study_files) == [0] * len(study_files)
    finally:
        svc.stop()
    assert svc.tick().jobs_queued == 0  # still inside the quiet period
    [study] = svc.tracker.waiting()
    stats = svc.tick(now=1e12)  # far in the future: quiet long enough
    assert stats.jobs_queued == 1 and svc.watched()
    with store.factory() as s:
        case = s.scalars(select(CaseRow)).one()
        assert case.site == "s1" and not case.notes and not case.records
    _work(store)
    stats = svc.tick()  # prediction exists → SR spooled; PACS is down → stays pending
    assert stats.exported == 1 and svc.watched() == []
    [name] = svc.outbox.pending()
    assert svc.outbox.state(name)["attempts"] == 1 and svc.outbox.state(name)["last_error"]
    pacs = RecordingSCP(pacs_port).start()
    try:
        assert svc.tick().outbox is not None
        assert svc.outbox.pending() == [] and svc.outbox.sent() == [name]
        svc.tick()
        svc.outbox.flush(now=1e12)
    finally:
        pacs.stop()
    assert len(pacs.received) == 1  # exactly once, even after more ticks
    sop_uid, data = pacs.received[0]
    sr = pydicom.dcmread(io.BytesIO(data))
    assert sr.SOPInstanceUID == sop_uid and sr.StudyInstanceUID == study
    with store.factory() as s:
        pred = s.scalars(select(PredictionRow)).one()
    parsed = read_sr_findings(sr)
    assert parsed["case"]["Probability of cancer"] == round(pred.malignancy_risk, 4)
    assert [f["center_mm"] for f in parsed["findings"]] == [f["center_mm"] for f in pred.findings]
    # Rebuilding (e.g. after a crash before the watch file was removed) keeps the same SOP Instance UID.
    assert svc.export_prediction(pred.id) == [name]
    from mmclinic.pacs.export import build_objects

    with store.factory() as s:
        row = s.get(PredictionRow, pred.id)
        assert row is not None
        assert build_objects(s, row)[0].data == svc.outbox.get(name)  # byte-identical rebuild


def test_case_takes_patient_notes_and_records_known_to_the_api(store: Store, study_files: list[Path]) -> None:
    pid = str(pydicom.dcmread(study_files[0], stop_before_pixels=True).PatientID)
    with transaction(store.factory) as s:
        submit(s, CaseInput(patient_id=pid, site="s1", notes=(NoteInput(b"smoker, cough"),), tabular={"age": 70}), "x")
    svc = PacsService(make_settings(store.data_dir), store.factory)
    for f in study_files:
        assert svc.receiver.store(f.read_bytes(), "s1", "c").status == 0
    assert svc.tick(now=1e12).jobs_queued == 1
    with store.factory() as s:
        case = s.scalars(select(CaseRow).where(CaseRow.study_id.is_not(None))).one()
        assert [n.data for n in case.notes] == [b"smoker, cough"] and case.records[0].values == {"age": 70}


def test_study_without_usable_series_is_audited_not_queued(store: Store, study_files: list[Path]) -> None:
    svc = PacsService(make_settings(store.data_dir), store.factory)
    for f in study_files[:2]:  # two slices: below the imaging plugin's minimum
        assert svc.receiver.store(f.read_bytes(), "s1", "c").status == 0
    assert svc.tick(now=1e12).jobs_queued == 0
    with store.factory() as s:
        assert s.scalars(select(Job)).all() == []
    from mmclinic.store.models import AuditEvent

    with store.factory() as s:
        ev = s.scalars(select(AuditEvent).where(AuditEvent.action == "pacs.study_complete")).one()
    assert ev.outcome != "ok" and "." in ev.outcome


def test_restart_recovers_studies_without_case(store: Store, study_files: list[Path]) -> None:
    svc = PacsService(make_settings(store.data_dir), store.factory)
    for f in study_files:
        svc.receiver.store(f.read_bytes(), "s1", "c")
    fresh = PacsService(make_settings(store.data_dir), store.factory)
    assert fresh.tracker.recover(store.factory) == 1
    assert fresh.tick(now=1e12).jobs_queued == 1


def test_export_with_seg_when_enabled(
    store: Store, study_files: list[Path], tmp_path: Path, require_tool: Callable[[str], str]
) -> None:
    svc = PacsService(make_settings(store.data_dir, write_seg=True), store.factory)
    for f in study_files:
        svc.receiver.store(f.read_bytes(), "s1", "c")
    svc.tick(now=1e12)
    _work(store)
    svc.tick()
    names = sorted(svc.outbox.sent())
    assert [n.split("-")[0] for n in names] == ["seg", "sr"]
    seg = pydicom.dcmread(io.BytesIO(svc.outbox.get(names[0]) or b""))
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == pydicom.dcmread(study_files[0]).StudyInstanceUID
    # The objects the service really exports (not only those built in the SR tests) pass dciodvfy.
    tool = require_tool("dciodvfy")
    for name in names:
        path = tmp_path / f"{name}.dcm"
        path.write_bytes(svc.outbox.get(name) or b"")
        assert dciodvfy_errors(tool, path) == [], name


def test_a_failing_export_is_retried_and_does_not_hold_up_other_jobs(store: Store, study_dirs: list[Path]) -> None:
    svc = PacsService(make_settings(store.data_dir), store.factory)
    for folder in study_dirs[:2]:
        for f in sorted(folder.glob("*.dcm")):
            svc.receiver.store(f.read_bytes(), "s1", "c")
    assert svc.tick(now=1e12).jobs_queued == 2
    _work(store)
    first, _ = svc.watched()
    real = svc.export_prediction
    broken = {first}

    def flaky(prediction_id: int) -> list[str]:
        with store.factory() as s:
            job_of = s.scalars(select(Job.id).where(Job.prediction_id == prediction_id)).one()
        if job_of in broken:
            raise RuntimeError("database went away")  # not an MmclinicError: a fault, not bad input
        return real(prediction_id)

    svc.export_prediction = flaky  # type: ignore[method-assign]
    stats = svc.tick()
    assert stats.exported == 1 and svc.watched() == [first]  # the other job went on; the failed one waits
    broken.clear()
    assert svc.tick().exported == 1 and svc.watched() == []
