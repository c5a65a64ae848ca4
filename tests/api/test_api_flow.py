"""End-to-end API behaviour with the deterministic engine: submit, job, prediction, review, worklist, upload."""

from __future__ import annotations

import hashlib

from sqlalchemy import select

from mmclinic.store.models import Instance
from mmclinic.store.testing import FakeEngine, make_ct_dicom


def test_submit_predict_review_cycle(api):
    job = api.submit("int1")
    assert (job["state"], job["duplicate"]) == ("queued", False)
    again = api.submit("int1")
    assert (again["job_id"], again["case_id"], again["duplicate"]) == (job["job_id"], job["case_id"], True)
    api.run_jobs()
    status = api.client.get(f"/api/v1/jobs/{job['job_id']}", headers=api.h("int1")).json()
    assert (status["state"], status["attempts"], status["error_reason"]) == ("done", 1, None)
    pid = status["prediction_id"]
    detail = api.client.get(f"/api/v1/predictions/{pid}", headers=api.h("clin1")).json()
    assert detail["case_id"] == job["case_id"] and detail["review_status"] == "pending"
    assert 0.0 <= detail["malignancy_risk"] <= 1.0 and detail["findings_count"] == len(detail["findings"]) == 1
    assert detail["findings"][0]["center_mm"] == [1.0, 2.0, 3.0]
    prov = detail["provenance"]
    assert prov["weights_sha256"] == "f" * 64 and prov["device"] == "cpu" and len(prov["input_fingerprint"]) == 64
    assert prov["modalities_present"] == ["notes", "tabular"]
    # Submitting the same inputs after the prediction exists still gives back the same job.
    assert api.submit("int1")["job_id"] == job["job_id"]

    r = api.client.post(
        f"/api/v1/predictions/{pid}/reviews",
        json={
            "verdict": "amend",
            "reason_code": "size",
            "comment": "lesion is 12 mm",
            "amendment": {"diameter_mm": 12},
        },
        headers=api.h("clin1"),
    )
    assert r.status_code == 201, r.text
    assert r.json()["reviewer"] == "clin1"
    bad = api.client.post(
        f"/api/v1/predictions/{pid}/reviews", json={"verdict": "reject", "reason_code": "fp"}, headers=api.h("clin1")
    )
    assert (bad.status_code, bad.json()["reason"]) == (400, "review.comment_required")
    api.client.post(
        f"/api/v1/predictions/{pid}/reviews", json={"verdict": "accept", "reason_code": "ok"}, headers=api.h("admin")
    )
    history = api.client.get(f"/api/v1/predictions/{pid}/reviews", headers=api.h("clin1")).json()
    assert [(h["verdict"], h["reviewer"]) for h in history] == [("amend", "clin1"), ("accept", "admin")]
    assert history[0]["amendment"] == {"diameter_mm": 12}
    assert api.client.get(f"/api/v1/predictions/{pid}", headers=api.h("clin1")).json()["review_status"] == "accepted"


def test_bad_input_job_records_its_reason(api):
    job = api.submit("int1", note="BAD scan request")
    api.run_jobs()
    status = api.client.get(f"/api/v1/jobs/{job['job_id']}", headers=api.h("int1")).json()
    assert (status["state"], status["error_reason"], status["prediction_id"]) == ("failed", "notes.fake_bad", None)


def test_request_errors_are_problems(api):
    h = api.h("int1")
    r = api.client.post("/api/v1/cases", json={"patient_id": "p"}, headers=h)
    assert (r.status_code, r.json()["reason"]) == (400, "input.no_modalities")
    r = api.client.post("/api/v1/cases", json={"patient_id": "bad id with spaces", "notes": []}, headers=h)
    assert (r.status_code, r.json()["reason"]) == (422, "input.validation")
    assert r.headers["content-type"].startswith("application/problem+json") and r.json()["errors"]
    r = api.client.post("/api/v1/cases", json={"patient_id": "p", "tabular": {"1bad": 3}}, headers=h)
    assert (r.status_code, r.json()["reason"]) == (400, "tabular.bad_field_name")
    r = api.client.get("/api/v1/predictions", params={"cursor": "!!notbase64"}, headers=h)
    assert (r.status_code, r.json()["reason"]) == (400, "input.bad_cursor")
    r = api.client.get("/api/v1/nothing-here", headers=h)
    assert (r.status_code, r.json()["reason"]) == (404, "not_found.route")


def test_upload_stores_files_durably_under_hashed_paths(api):
    study, series = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.1.1"
    blobs = [make_ct_dicom(study, series, f"{series}.{i}", instance=i) for i in range(1, 4)]
    files = [("files", (f"{i}.dcm", b, "application/dicom")) for i, b in enumerate(blobs)]
    data = {"patient_id": "anon-7", "notes": ["ct follow-up"], "tabular": '{"age": 70, "smoker": true}'}
    r = api.client.post("/api/v1/cases/upload", files=files, data=data, headers=api.h("int1"))
    assert r.status_code == 202, r.text
    with api.factory() as s:
        rows = s.scalars(select(Instance).order_by(Instance.id)).all()
    assert len(rows) == 3
    for row, blob in zip(rows, blobs, strict=True):
        path = api.data_dir / row.storage_path if not row.storage_path.startswith("/") else row.storage_path
        stored = open(path, "rb").read()  # noqa: SIM115
        assert stored == blob and row.sha256 == hashlib.sha256(blob).hexdigest()
        assert study not in str(path) and row.sop_uid not in str(path)  # no UIDs in paths
        assert str(path).startswith(str(api.data_dir / "dicom"))
    # The JSON route can now reference the ingested study; same inputs as the upload → the same job.
    again = api.client.post("/api/v1/cases/upload", files=files, data=data, headers=api.h("int1")).json()
    assert again["duplicate"] and again["job_id"] == r.json()["job_id"]
    by_ref = api.submit("int1", note="other note", patient_id="anon-7", study_instance_uid=study)
    assert not by_ref["duplicate"]
    api.run_jobs(FakeEngine())
    detail_modalities = {
        tuple(
            api.client.get(f"/api/v1/predictions/{p['id']}", headers=api.h("int1")).json()["provenance"][
                "modalities_present"
            ]
        )
        for p in api.client.get("/api/v1/predictions", headers=api.h("int1")).json()["items"]
    }
    assert detail_modalities == {("imaging", "notes", "tabular")}


def test_upload_rejects_bad_files(api):
    h = api.h("int1")
    r = api.client.post(
        "/api/v1/cases/upload", files=[("files", ("x.dcm", b"not dicom" * 40))], data={"patient_id": "p"}, headers=h
    )
    assert (r.status_code, r.json()["reason"]) == (400, "dicom.unreadable")
    two = [("files", (f"{i}.dcm", make_ct_dicom(f"1.2.{i}", f"1.2.{i}.1", f"1.2.{i}.1.1"))) for i in (1, 2)]
    r = api.client.post("/api/v1/cases/upload", files=two, data={"patient_id": "p"}, headers=h)
    assert (r.status_code, r.json()["reason"]) == (400, "dicom.multiple_studies")
    one = make_ct_dicom("1.2.9", "1.2.9.1", "1.2.9.1.1")
    assert (
        api.client.post(
            "/api/v1/cases/upload", files=[("files", ("a.dcm", one))], data={"patient_id": "p"}, headers=h
        ).status_code
        == 202
    )
    changed = make_ct_dicom("1.2.9", "1.2.9.1", "1.2.9.1.1", instance=5)
    r = api.client.post(
        "/api/v1/cases/upload", files=[("files", ("a.dcm", changed))], data={"patient_id": "p"}, headers=h
    )
    assert (r.status_code, r.json()["reason"]) == (409, "conflict.instance_changed")
    r = api.client.post(
        "/api/v1/cases/upload",
        files=[("files", ("a.dcm", one))],
        data={"patient_id": "p", "tabular": "[1, 2]"},
        headers=h,
    )
    assert (r.status_code, r.json()["reason"]) == (400, "tabular.bad_json")


def test_worklist_filters_sorting_and_cursor_pagination(api):
    for i in range(7):
        api.submit("int1", note=f"case {i}", patient_id=f"p{i}")
    api.submit("int2", note="other site", patient_id="q")
    api.run_jobs()
    h = api.h("clin1")
    items = api.client.get("/api/v1/predictions", params={"limit": 200}, headers=h).json()["items"]
    assert len(items) == 7
    risks = [i["malignancy_risk"] for i in items]
    assert risks == sorted(risks, reverse=True)
    for sort in ("risk", "-risk", "date", "-date"):
        seen, cursor = [], None
        while True:
            params = {"limit": 3, "sort": sort} | ({"cursor": cursor} if cursor else {})
            page = api.client.get("/api/v1/predictions", params=params, headers=h).json()
            seen += [i["id"] for i in page["items"]]
            cursor = page["next_cursor"]
            if not cursor:
                break
        assert sorted(seen) == sorted(i["id"] for i in items) and len(seen) == 7, sort
        if sort == "date":
            assert seen == sorted(seen)
    threshold = sorted(risks)[3]
    high = api.client.get("/api/v1/predictions", params={"min_risk": threshold}, headers=h).json()["items"]
    assert {i["malignancy_risk"] for i in high} == {r for r in risks if r >= threshold}
    pid = items[0]["id"]
    api.client.post(f"/api/v1/predictions/{pid}/reviews", json={"verdict": "accept", "reason_code": "ok"}, headers=h)
    acc = api.client.get("/api/v1/predictions", params={"review_status": "accepted"}, headers=h).json()["items"]
    assert [i["id"] for i in acc] == [pid]
    future = api.client.get("/api/v1/predictions", params={"since": "2999-01-01T00:00:00Z"}, headers=h).json()
    past = api.client.get("/api/v1/predictions", params={"until": "2000-01-01T00:00:00"}, headers=h).json()
    assert future["items"] == past["items"] == []
    recent = api.client.get("/api/v1/predictions", params={"since": "2000-01-01T00:00:00+00:00"}, headers=h).json()
    assert len(recent["items"]) == 7
    # A cursor is bound to its sort order.
    first = api.client.get("/api/v1/predictions", params={"limit": 2}, headers=h).json()
    r = api.client.get("/api/v1/predictions", params={"sort": "date", "cursor": first["next_cursor"]}, headers=h)
    assert (r.status_code, r.json()["reason"]) == (400, "input.bad_cursor")


def test_service_endpoints_and_admin(api):
    assert api.client.get("/healthz").json() == {"status": "ok"}
    ready = api.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "model": "ok"}
    assert isinstance(api.client.get("/api/v1/plugins", headers=api.h("clin1")).json(), list)
    r = api.client.post(
        "/api/v1/admin/users", json={"name": "dora", "role": "clinician", "site": "s3"}, headers=api.h("admin")
    )
    assert r.status_code == 201
    uid = r.json()["id"]
    dup = api.client.post(
        "/api/v1/admin/users", json={"name": "dora", "role": "clinician", "site": "s3"}, headers=api.h("admin")
    )
    assert (dup.status_code, dup.json()["reason"]) == (409, "conflict.user_exists")
    tok = api.client.post(f"/api/v1/admin/users/{uid}/tokens", json={"expires_in_days": 1}, headers=api.h("admin"))
    secret = tok.json()["token"]
    listed = api.client.get(f"/api/v1/admin/users/{uid}/tokens", headers=api.h("admin")).json()
    assert len(listed) == 1 and "token" not in listed[0] and secret.startswith(listed[0]["prefix"])
    assert api.client.get("/api/v1/predictions", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    names = [u["name"] for u in api.client.get("/api/v1/admin/users", headers=api.h("admin")).json()]
    assert "dora" in names


def test_readyz_reports_a_missing_model(tmp_path):
    from fastapi.testclient import TestClient

    from mmclinic.api import create_app
    from mmclinic.config import Settings
    from mmclinic.store import db as dbmod

    engine = dbmod.create_db_engine(f"sqlite:///{tmp_path}/r.db")
    dbmod.upgrade(engine)
    app = create_app(Settings(data_dir=tmp_path, model="no-such-task"), engine=engine)
    r = TestClient(app).get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["model"] == "error: plugin.not_found"
    engine.dispose()
