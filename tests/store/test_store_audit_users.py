"""Audit hash chain (append, verify, tamper detection) and users / tokens."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import text

from mmclinic.errors import AuthError, ConflictError, InputError
from mmclinic.store import audit, users
from mmclinic.store import db as dbmod
from mmclinic.store.models import utcnow

ACTOR = audit.Actor("alice", "clinician", "s1", "127.0.0.1")


def _append(db, n: int) -> None:
    for i in range(n):
        with dbmod.transaction(db.factory) as s:
            audit.record(s, ACTOR, "prediction.read", f"prediction/{i}")


def _drop_guard(db, table: str = "audit_events") -> None:
    """Simulate an attacker with DDL rights: remove the append-only triggers."""
    with db.engine.begin() as c:
        if db.backend == "postgresql":
            c.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))
        else:
            c.execute(text(f"DROP TRIGGER {table}_no_update"))
            c.execute(text(f"DROP TRIGGER {table}_no_delete"))


def test_chain_verifies_and_rolls_back_with_its_transaction(db):
    _append(db, 5)
    with pytest.raises(RuntimeError), dbmod.transaction(db.factory) as s:
        audit.record(s, ACTOR, "prediction.read", "prediction/x")
        raise RuntimeError("handler failed")
    with db.factory() as s:
        res = audit.verify(s)
        assert res.ok and res.events == 5
        rows = s.scalars(audit.query(action="prediction.read", after_seq=2, limit=2)).all()
        assert [r.seq for r in rows] == [3, 4]
        assert rows[0].prev_hash != rows[0].hash


@pytest.mark.parametrize("tamper", ["edit", "delete_middle", "delete_last"])
def test_verify_detects_tampering(db, tamper):
    _append(db, 4)
    _drop_guard(db)
    with db.engine.begin() as c:
        if tamper == "edit":
            c.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2"))
        elif tamper == "delete_middle":
            c.execute(text("DELETE FROM audit_events WHERE seq = 3"))
        else:
            c.execute(text("DELETE FROM audit_events WHERE seq = 4"))
    with db.factory() as s:
        res = audit.verify(s)
    assert not res.ok
    assert res.first_bad_seq == {"edit": 2, "delete_middle": 3, "delete_last": 4}[tamper]


def test_users_and_tokens(db):
    with dbmod.transaction(db.factory) as s:
        u = users.create_user(s, "bob", "clinician", "s1")
        tok, secret = users.issue_token(s, u, label="laptop")
        _, old = users.issue_token(s, u, expires_at=utcnow() - timedelta(seconds=1))
        tok_id = tok.id
    with db.engine.connect() as c:
        stored = c.execute(text("SELECT token_sha256 FROM tokens")).scalars().all()
    assert secret not in stored and users.token_hash(secret) in stored
    with db.factory() as s:
        p = users.authenticate(s, secret)
        assert (p.name, p.role, p.site, p.can_see_site("s2")) == ("bob", "clinician", "s1", False)
        for bad in (old, secret + "x", "mmc_nope", "Bearer x"):
            with pytest.raises(AuthError):
                users.authenticate(s, bad)
    with dbmod.transaction(db.factory) as s:
        users.revoke_token(s, tok_id)
    with db.factory() as s, pytest.raises(AuthError):
        users.authenticate(s, secret)
    with dbmod.transaction(db.factory) as s:
        with pytest.raises(ConflictError):
            users.create_user(s, "bob", "admin", "s1")
        with pytest.raises(InputError) as ei:
            users.create_user(s, "carol", "superuser", "s1")
        assert ei.value.reason == "input.bad_role"


def test_concurrent_appends_keep_one_unbroken_chain(db):
    import threading

    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(8):
                with dbmod.transaction(db.factory) as s:
                    audit.record(s, audit.Actor(f"w{n}", "system", "s1"), "x.write", f"x/{n}/{i}")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with db.factory() as s:
        res = audit.verify(s)
    assert res.ok and res.events == 32
