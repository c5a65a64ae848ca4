"""Append-only, hash-chained audit events: one per read or write of patient data; chain verification."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from mmclinic.case import sha256_bytes
from mmclinic.store.models import AuditEvent, AuditHead, utcnow

GENESIS = "0" * 64


@dataclass(frozen=True)
class Actor:
    """Who acts: a user (name, role, site) or a system component (``worker``, ``cli``)."""

    name: str
    role: str
    site: str
    client: str = ""


def _canonical_time(ts: datetime) -> str:
    ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def event_hash(prev_hash: str, ev: AuditEvent) -> str:
    """SHA-256 over the previous hash and every field of the event (stable JSON)."""
    body = {
        "seq": ev.seq,
        "occurred_at": _canonical_time(ev.occurred_at),
        "actor": ev.actor,
        "role": ev.role,
        "site": ev.site,
        "action": ev.action,
        "resource": ev.resource,
        "outcome": ev.outcome,
        "client": ev.client,
    }
    return sha256_bytes((prev_hash + json.dumps(body, sort_keys=True, separators=(",", ":"))).encode())


def record(session: Session, actor: Actor, action: str, resource: str, outcome: str = "ok") -> AuditEvent:
    """Append one event in the caller's transaction (it commits or rolls back with the data it audits)."""
    # Locking the head row serialises appenders on PostgreSQL; on SQLite BEGIN IMMEDIATE already does.
    head = session.execute(select(AuditHead).where(AuditHead.id == 1).with_for_update()).scalar_one()
    ev = AuditEvent(
        seq=head.seq + 1,
        occurred_at=utcnow(),
        actor=actor.name[:128],
        role=actor.role[:32],
        site=actor.site[:64],
        action=action[:64],
        resource=resource[:256],
        outcome=outcome[:128],
        client=actor.client[:128],
        prev_hash=head.hash,
    )
    ev.hash = event_hash(head.hash, ev)
    session.add(ev)
    head.seq, head.hash = ev.seq, ev.hash
    session.flush()
    return ev


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of a chain check: ``ok`` and, when broken, the first bad sequence number and why."""

    ok: bool
    events: int
    first_bad_seq: int | None = None
    problem: str = ""


def verify(session: Session, batch: int = 5000) -> VerifyResult:
    """Walk the chain in ``seq`` order; detect edited rows (hash), deleted rows (gap / head mismatch)."""
    prev_hash, expected_seq, count = GENESIS, 1, 0
    while True:
        rows: Sequence[AuditEvent] = session.scalars(
            select(AuditEvent).where(AuditEvent.seq >= expected_seq).order_by(AuditEvent.seq).limit(batch)
        ).all()
        if not rows:
            break
        for ev in rows:
            if ev.seq != expected_seq:
                return VerifyResult(False, count, expected_seq, f"event {expected_seq} is missing")
            if ev.prev_hash != prev_hash:
                return VerifyResult(False, count, ev.seq, "previous-hash link does not match")
            if event_hash(prev_hash, ev) != ev.hash:
                return VerifyResult(False, count, ev.seq, "event content does not match its hash")
            prev_hash, expected_seq, count = ev.hash, ev.seq + 1, count + 1
    head = session.get(AuditHead, 1)
    if head is None:
        return VerifyResult(False, count, None, "chain head is missing")
    if head.seq != count or head.hash != prev_hash:
        return VerifyResult(False, count, count + 1, f"chain head says {head.seq} events, found {count}")
    return VerifyResult(True, count)


def query(
    actor_name: str | None = None,
    action: str | None = None,
    resource: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after_seq: int = 0,
    limit: int = 100,
) -> Select[AuditEvent]:
    """A filtered, seq-ordered select of audit events (keyset pagination on ``seq``)."""
    stmt = select(AuditEvent).where(AuditEvent.seq > after_seq)
    if actor_name:
        stmt = stmt.where(AuditEvent.actor == actor_name)
    if action:
        stmt = stmt.where(AuditEvent.action == action)
    if resource:
        stmt = stmt.where(AuditEvent.resource == resource)
    if since:
        stmt = stmt.where(AuditEvent.occurred_at >= since)
    if until:
        stmt = stmt.where(AuditEvent.occurred_at < until)
    return stmt.order_by(AuditEvent.seq).limit(limit)
