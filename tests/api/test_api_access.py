"""Authentication, roles, site scoping on every resource endpoint, and one audit event per access."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from mmclinic.api import check_bind
from mmclinic.errors import ConfigError
from mmclinic.store.models import AuditEvent


def _events(api) -> list[AuditEvent]:
    with api.factory() as s:
        return list(s.scalars(select(AuditEvent).order_by(AuditEvent.seq)))


def _assert_problem(r, status: int, reason: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert (body["status"], body["reason"], body["type"]) == (status, reason, f"urn:mmclinic:problem:{reason}")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/predictions"),
        ("get", "/api/v1/predictions/1"),
        ("get", "/api/v1/jobs/1"),
        ("get", "/api/v1/predictions/1/reviews"),
        ("get", "/api/v1/admin/audit"),
        ("get", "/api/v1/plugins"),
        ("post", "/api/v1/cases"),
    ],
)
def test_no_token_or_a_bad_one_is_401(api, method, path):
    r = api.client.request(method, path, json={"patient_id": "p", "notes": [{"text": "x"}]})
    _assert_problem(r, 401, "auth.missing_token")
    assert r.headers["www-authenticate"].startswith("Bearer")
    for bad in ("Bearer mmc_forged", "Bearer " + api.tokens["clin1"] + "x", "Basic dXNlcjpwYXNz"):
        r = api.client.request(method, path, headers={"Authorization": bad}, json={"patient_id": "p"})
        assert r.status_code == 401, (bad, r.text)
    assert _events(api) == []  # nobody to attribute it to; nothing patient-related was touched


def test_revoked_token_is_401(api):
    r = api.client.post("/api/v1/admin/users/2/tokens", json={"label": "tmp"}, headers=api.h("admin"))
    assert r.status_code == 201
    secret, tid = r.json()["token"], r.json()["id"]
    hdr = {"Authorization": f"Bearer {secret}"}
    assert api.client.get("/api/v1/predictions", headers=hdr).status_code == 200
    assert api.client.delete(f"/api/v1/admin/tokens/{tid}", headers=api.h("admin")).json()["revoked_at"]
    _assert_problem(api.client.get("/api/v1/predictions", headers=hdr), 401, "auth.invalid_token")


def test_cross_site_access_is_404_on_every_resource_endpoint(api):
    job = api.submit("int1")
    pid = api.predicted("int1", note="other")
    jid = job["job_id"]
    for user in ("clin2", "int2"):
        _assert_problem(api.client.get(f"/api/v1/predictions/{pid}", headers=api.h(user)), 404, "not_found.prediction")
        _assert_problem(
            api.client.get(f"/api/v1/predictions/{pid}/reviews", headers=api.h(user)), 404, "not_found.prediction"
        )
        _assert_problem(api.client.get(f"/api/v1/jobs/{jid}", headers=api.h(user)), 404, "not_found.job")
    r = api.client.post(
        f"/api/v1/predictions/{pid}/reviews", json={"verdict": "accept", "reason_code": "ok"}, headers=api.h("clin2")
    )
    _assert_problem(r, 404, "not_found.prediction")
    # A missing id and another site's id look the same.
    missing = api.client.get("/api/v1/predictions/999999", headers=api.h("clin2"))
    assert (
        missing.json()["detail"]
        == api.client.get(f"/api/v1/predictions/{pid}", headers=api.h("clin2")).json()["detail"]
    )
    # Lists never show another site's rows, even when asked by name.
    for params in ({}, {"site": "s1"}, {"sort": "date"}):
        r = api.client.get("/api/v1/predictions", params=params, headers=api.h("clin2"))
        assert r.status_code == 200 and r.json()["items"] == []
    own = api.client.get("/api/v1/predictions", headers=api.h("clin1")).json()["items"]
    assert len(own) == 2 and pid in {i["id"] for i in own} and {i["site"] for i in own} == {"s1"}
    # The admin sees every site.
    assert api.client.get(f"/api/v1/predictions/{pid}", headers=api.h("admin")).status_code == 200
    # Denied reads are audited with their outcome.
    denied = [e for e in _events(api) if e.actor == "clin2" and e.outcome == "not_found.prediction"]
    assert len(denied) == 5  # read, reviews, review, missing id, read again


def test_a_study_of_another_site_cannot_be_referenced(api):
    from mmclinic.store.testing import make_ct_dicom

    blob = make_ct_dicom("1.2.3.4", "1.2.3.4.1", "1.2.3.4.1.1")
    r = api.client.post(
        "/api/v1/cases/upload", files=[("files", ("a.dcm", blob))], data={"patient_id": "p9"}, headers=api.h("int1")
    )
    assert r.status_code == 202, r.text
    r = api.client.post(
        "/api/v1/cases", json={"patient_id": "p9", "study_instance_uid": "1.2.3.4"}, headers=api.h("int2")
    )
    _assert_problem(r, 404, "not_found.study")


def test_roles(api):
    pid = api.predicted()
    review = {"verdict": "accept", "reason_code": "agree"}
    _assert_problem(
        api.client.post("/api/v1/cases", json={"patient_id": "p", "notes": [{"text": "x"}]}, headers=api.h("clin1")),
        403,
        "auth.role_forbidden",
    )
    _assert_problem(
        api.client.post(f"/api/v1/predictions/{pid}/reviews", json=review, headers=api.h("int1")),
        403,
        "auth.role_forbidden",
    )
    for user in ("clin1", "int1"):
        _assert_problem(api.client.get("/api/v1/admin/audit", headers=api.h(user)), 403, "auth.role_forbidden")
        _assert_problem(api.client.get("/api/v1/admin/users", headers=api.h(user)), 403, "auth.role_forbidden")
    r = api.client.post(
        "/api/v1/cases", json={"patient_id": "p", "site": "s2", "notes": [{"text": "x"}]}, headers=api.h("int1")
    )
    _assert_problem(r, 403, "auth.site_forbidden")
    assert api.client.post(f"/api/v1/predictions/{pid}/reviews", json=review, headers=api.h("clin1")).status_code == 201


def test_every_patient_data_access_writes_one_audit_event(api):
    before = len(_events(api))
    job = api.submit("int1")
    api.run_jobs()
    pid = api.client.get(f"/api/v1/jobs/{job['job_id']}", headers=api.h("int1")).json()["prediction_id"]
    api.client.get(f"/api/v1/predictions/{pid}", headers=api.h("clin1"))
    api.client.get("/api/v1/predictions", headers=api.h("clin1"))
    api.client.post(
        f"/api/v1/predictions/{pid}/reviews",
        json={"verdict": "reject", "reason_code": "fp", "comment": "scar"},
        headers=api.h("clin1"),
    )
    api.client.get(f"/api/v1/predictions/{pid}/reviews", headers=api.h("clin1"))
    events = [e for e in _events(api)[before:] if not e.actor.startswith("worker:")]
    api_events = [(e.actor, e.action, e.outcome) for e in events]
    assert api_events == [
        ("int1", "case.create", "ok"),
        ("int1", "job.read", "ok"),
        ("clin1", "prediction.read", "ok"),
        ("clin1", "worklist.read", "ok"),
        ("clin1", "review.create", "ok"),
        ("clin1", "review.read", "ok"),
    ]
    assert all(e.client == "testclient" and e.site for e in events)
    assert events[1].resource.startswith("job/") and events[-1].resource == f"prediction/{pid}/reviews"
    # The admin audit query returns them, and the query itself is audited.
    r = api.client.get("/api/v1/admin/audit", params={"actor": "clin1", "limit": 2}, headers=api.h("admin"))
    page = r.json()
    assert [i["action"] for i in page["items"]] == ["prediction.read", "worklist.read"]
    page2 = api.client.get(
        "/api/v1/admin/audit", params={"actor": "clin1", "after_seq": page["next_after_seq"]}, headers=api.h("admin")
    ).json()
    assert [i["action"] for i in page2["items"]] == ["review.create", "review.read"]
    assert _events(api)[-1].action == "audit.read"


def test_refuses_to_serve_unauthenticated_off_loopback():
    check_bind("127.0.0.1", auth_enabled=False)
    check_bind("::1", auth_enabled=False)
    check_bind("0.0.0.0", auth_enabled=True)
    for host in ("0.0.0.0", "10.1.2.3", "::", "example.org"):
        with pytest.raises(ConfigError) as ei:
            check_bind(host, auth_enabled=False)
        assert ei.value.reason == "config.auth_disabled_non_loopback"


def test_serve_command_exits_2_without_starting(tmp_path, monkeypatch):
    import subprocess
    import sys
    from pathlib import Path

    env = {
        "MMCLINIC_API__AUTH_ENABLED": "false",
        "MMCLINIC_DATA_DIR": str(tmp_path),
        "MMCLINIC_CONFIG": str(tmp_path / "none.toml"),
        "PATH": "/usr/bin:/bin",
    }
    cli = Path(sys.executable).with_name("mmclinic")
    r = subprocess.run(
        [str(cli), "serve", "--host", "0.0.0.0", "--port", "1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: config.auth_disabled_non_loopback")
