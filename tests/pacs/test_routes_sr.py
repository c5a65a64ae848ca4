"""``GET /api/v1/predictions/{id}/sr``: the SR file, same UID as the one sent to the PACS; site scoping; audit."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
from fastapi.testclient import TestClient
from sqlalchemy import select

from mmclinic.api import create_app
from mmclinic.pacs.service import PacsService
from mmclinic.pacs.testing import Store, make_settings
from mmclinic.store import users
from mmclinic.store.db import transaction
from mmclinic.store.models import AuditEvent, PredictionRow
from mmclinic.store.testing import FakeEngine
from mmclinic.store.worker import run_worker


def test_sr_route(store: Store, study_files: list[Path]) -> None:
    settings = make_settings(store.data_dir)
    svc = PacsService(settings, store.factory)
    for f in study_files:
        svc.receiver.store(f.read_bytes(), "s1", "c")
    svc.tick(now=1e12)
    run_worker(store.factory, FakeEngine(), "w", poll_s=0.01, until_idle=True)
    svc.tick()
    with transaction(store.factory) as s:
        _, mine = users.issue_token(s, users.create_user(s, "c1", "clinician", "s1"))
        _, other = users.issue_token(s, users.create_user(s, "c2", "clinician", "s2"))
        pred_id = s.scalars(select(PredictionRow.id)).one()
    client = TestClient(create_app(settings, store.engine, model_check=lambda: (True, "ok")))
    r = client.get(f"/api/v1/predictions/{pred_id}/sr", headers={"Authorization": f"Bearer {mine}"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    ds = pydicom.dcmread(io.BytesIO(r.content))
    [name] = svc.outbox.sent() or svc.outbox.pending()
    assert r.content == svc.outbox.get(name)
    assert ds.Modality == "SR"
    assert (
        client.get(f"/api/v1/predictions/{pred_id}/sr", headers={"Authorization": f"Bearer {other}"}).status_code == 404
    )
    assert client.get(f"/api/v1/predictions/{pred_id}/sr").status_code == 401
    with store.factory() as s:
        outcomes = [e.outcome for e in s.scalars(select(AuditEvent).where(AuditEvent.action == "prediction.sr.read"))]
    assert outcomes == ["ok", "not_found.prediction"]
