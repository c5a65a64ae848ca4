"""Migrations: head matches the ORM, upgrade from 0001 keeps seeded rows, append-only triggers work."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from mmclinic.store import db as dbmod
from mmclinic.store.models import Base


def test_head_schema_matches_models(db):
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    assert dbmod.current_revision(db.engine) == dbmod.head_revision()


def test_upgrade_from_0001_keeps_rows(empty_db):
    eng = empty_db.engine
    dbmod.upgrade(eng, "0001")
    assert "reviews" not in dbmod.table_names(eng)
    now = datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    with eng.begin() as c:
        c.execute(
            text(
                "INSERT INTO users (id, name, role, site, active, created_at) VALUES (1, 'u', 'admin', 's1', true, :t)"
            ),
            {"t": now},
        )
        c.execute(text("INSERT INTO patients (id, pseudo_id, site, created_at) VALUES (1, 'p1', 's1', :t)"), {"t": now})
        c.execute(
            text(
                "INSERT INTO cases (id, case_key, patient_id, site, input_fingerprint, created_at) "
                "VALUES (1, 'k1', 1, 's1', :fp, :t)"
            ),
            {"fp": "a" * 64, "t": now},
        )
        c.execute(
            text(
                "INSERT INTO predictions (id, case_id, site, input_fingerprint, task, tumor_probability, "
                "malignancy_risk, "
                "findings, modality_contributions, weights_sha256, task_version, plugin_versions, mmclinic_version, "
                "preprocessing_hash, input_fingerprints, device, timings_ms, modalities_present, created_at) VALUES "
                "(1, 1, 's1', :fp, 'tumor-risk', 0.5, 0.25, '[]', '{}', :w, '1', '{}', '0.1', 'h', '{}', 'cpu', '{}', "
                "'[]', :t)"
            ),
            {"fp": "a" * 64, "w": "b" * 64, "t": now},
        )
        c.execute(
            text(
                "INSERT INTO jobs (id, case_id, model, state, attempts, max_attempts, not_before, "
                "prediction_id, created_at, updated_at) VALUES (1, 1, 'm', 'done', 1, 3, :t, 1, :t, :t)"
            ),
            {"t": now},
        )
    dbmod.upgrade(eng)
    assert dbmod.current_revision(eng) == "0002"
    with eng.connect() as c:
        pred = c.execute(text("SELECT malignancy_risk, review_status, weights_sha256 FROM predictions")).one()
        assert tuple(pred) == (0.25, "pending", "b" * 64)
        assert c.execute(text("SELECT state, prediction_id FROM jobs")).one() == ("done", 1)
        assert c.execute(text("SELECT count(*) FROM cases")).scalar() == 1
        assert c.execute(text("SELECT name FROM users")).scalar() == "u"
        assert c.execute(text("SELECT seq, hash FROM audit_head")).one() == (0, "0" * 64)
    # And back down again: the 0002 objects go, the seeded rows stay.
    dbmod.downgrade(eng, "0001")
    assert "audit_events" not in dbmod.table_names(eng)
    with eng.connect() as c:
        assert c.execute(text("SELECT count(*) FROM predictions")).scalar() == 1


@pytest.mark.parametrize("table", ["reviews", "audit_events"])
def test_append_only_tables_refuse_update_and_delete(db, table):
    from mmclinic.store.audit import Actor, record

    with dbmod.transaction(db.factory) as s:
        record(s, Actor("a", "admin", "s1"), "x.read", "x/1")
        if table == "reviews":
            s.execute(
                text(
                    "INSERT INTO users (id, name, role, site, active, created_at) "
                    "VALUES (7, 'r', 'clinician', 's1', true, CURRENT_TIMESTAMP)"
                )
            )
            s.execute(
                text("INSERT INTO patients (id, pseudo_id, site, created_at) VALUES (1, 'p', 's1', CURRENT_TIMESTAMP)")
            )
            s.execute(
                text(
                    "INSERT INTO cases (id, case_key, patient_id, site, input_fingerprint, created_at) "
                    "VALUES (1, 'k', 1, 's1', 'f', CURRENT_TIMESTAMP)"
                )
            )
            s.execute(
                text(
                    "INSERT INTO predictions (id, case_id, site, input_fingerprint, task, tumor_probability, "
                    "malignancy_risk, findings, modality_contributions, weights_sha256, task_version, plugin_versions, "
                    "mmclinic_version, preprocessing_hash, input_fingerprints, device, timings_ms, modalities_present, "
                    "created_at) VALUES (1, 1, 's1', 'f', 't', 0.1, 0.1, '[]', '{}', 'w', '1', '{}', '0', 'h', '{}', "
                    "'cpu', '{}', '[]', CURRENT_TIMESTAMP)"
                )
            )
            s.execute(
                text(
                    "INSERT INTO reviews (prediction_id, verdict, reason_code, comment, reviewer_id, "
                    "reviewer_name, created_at) VALUES (1, 'accept', 'ok', '', 7, 'r', CURRENT_TIMESTAMP)"
                )
            )
    column = "comment" if table == "reviews" else "outcome"
    for stmt in (f"UPDATE {table} SET {column} = 'tampered'", f"DELETE FROM {table}"):
        with pytest.raises(DBAPIError, match="append-only"), dbmod.transaction(db.factory) as s:
            s.execute(text(stmt))
    with db.engine.connect() as c:
        assert c.execute(text(f"SELECT count(*) FROM {table}")).scalar() == 1
        assert c.execute(text(f"SELECT {column} FROM {table}")).scalar() != "tampered"
