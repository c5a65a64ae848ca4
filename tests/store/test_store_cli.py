"""``mmclinic db upgrade``, ``users add/list``, ``tokens``, ``audit verify`` against a real database."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest
from sqlalchemy import text
from typer.testing import CliRunner

from mmclinic.cli import app
from mmclinic.config import get_settings
from mmclinic.store import db as dbmod
from mmclinic.store import users


@pytest.fixture
def cli(empty_db, tmp_path, monkeypatch) -> Iterator:
    monkeypatch.setenv("MMCLINIC_DATABASE_URL", empty_db.url)
    monkeypatch.setenv("MMCLINIC_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MMCLINIC_CONFIG", str(tmp_path / "none.toml"))
    get_settings.cache_clear()
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, list(args))

    yield run
    get_settings.cache_clear()


def test_db_users_tokens_and_audit_verify(cli, empty_db):
    r = cli("db", "upgrade")
    assert r.exit_code == 0 and "revision 0002" in r.output
    assert cli("db", "current").output.strip() == "0002"
    r = cli("users", "add", "nurse.ratched", "--role", "clinician", "--site", "north")
    assert r.exit_code == 0, r.output
    secret = r.output.strip().splitlines()[-1]
    with empty_db.factory() as s:
        p = users.authenticate(s, secret)
    assert (p.name, p.role, p.site) == ("nurse.ratched", "clinician", "north")
    assert "nurse.ratched\tclinician\tnorth\tactive" in cli("users", "list").output
    r = cli("users", "add", "x", "--role", "root", "--site", "north")
    assert r.exit_code != 0 and r.exception.reason == "input.bad_role"
    second = cli("tokens", "issue", "nurse.ratched", "--label", "ward").output.strip().splitlines()[-1]
    listed = cli("tokens", "list", "nurse.ratched").output
    assert listed.count("active") == 2 and second not in listed and secret not in listed
    assert cli("tokens", "revoke", "1").exit_code == 0
    with empty_db.factory() as s, pytest.raises(Exception, match="revoked"):
        users.authenticate(s, secret)
    r = cli("audit", "verify")
    assert r.exit_code == 0 and "4 events" in r.output  # user.create, token.create x2, token.revoke
    # An attacker with table access edits the trail: verify notices.
    with empty_db.engine.begin() as c:
        if empty_db.backend == "postgresql":
            c.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))
        else:
            c.execute(text("DROP TRIGGER audit_events_no_update"))
        c.execute(text("UPDATE audit_events SET action = 'nothing' WHERE seq = 2"))
    r = cli("audit", "verify")
    assert r.exit_code == 1 and "BROKEN at event 2" in r.output


def test_dicom_ingest_is_idempotent_and_case_round_trips(db, tmp_path):
    from mmclinic.case import IMAGING, NOTES, StudyRef
    from mmclinic.errors import ConflictError, InputError
    from mmclinic.store.cases import CaseInput, NoteInput, submit, to_case
    from mmclinic.store.dicomstore import ingest_files, parse_instance
    from mmclinic.store.testing import make_ct_dicom

    blobs = [make_ct_dicom("1.9.1", "1.9.1.1", f"1.9.1.1.{i}", instance=i) for i in range(1, 3)]
    with dbmod.transaction(db.factory) as s:
        study = ingest_files(s, tmp_path, "s1", blobs)
        ingest_files(s, tmp_path, "s1", blobs[:1])  # same bytes again: no-op
        res = submit(s, CaseInput("p", "s1", study.study_uid, (NoteInput(b"n"),)), model="m")
        case = to_case(s, res.case)
    ref = case.inputs[IMAGING]
    assert isinstance(ref, StudyRef) and len(ref.files) == 2
    assert sorted(p.read_bytes() for p in ref.files) == sorted(blobs)
    assert case.inputs[NOTES][0].data == b"n" and case.site == "s1" and case.patient_id == "p"
    with dbmod.transaction(db.factory) as s, pytest.raises(ConflictError):
        ingest_files(s, tmp_path, "s2", blobs)  # another site cannot claim the study
    for bad, reason in (
        (b"", "dicom.unreadable"),
        (b"\0" * 200, "dicom.unreadable"),
        (blobs[0][:300], "dicom.missing_uid"),
    ):
        with pytest.raises(InputError) as ei:
            parse_instance(bad)
        assert ei.value.reason == reason
    no_uid = make_ct_dicom("1.9.2", "1.9.2.1", "1.9.2.1.1").replace(b"1.9.2.1.1", b"x.y.z.w.v")
    with pytest.raises(InputError), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about the invalid UI value before we reject it
        parse_instance(no_uid)


def test_store_never_imports_torch():
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import mmclinic.store.audit, mmclinic.store.cases, mmclinic.store.db, mmclinic.store.dicomstore\n"
        "import mmclinic.store.models, mmclinic.store.predictions, mmclinic.store.queue, mmclinic.store.users\n"
        "import mmclinic.store.worker, mmclinic.store.testing\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
