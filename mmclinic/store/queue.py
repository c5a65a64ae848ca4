"""Job queue in the database: claim under a lease (SKIP LOCKED / BEGIN IMMEDIATE), heartbeat, complete, retry."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session, sessionmaker

from mmclinic.store.db import transaction
from mmclinic.store.models import Job, utcnow


@dataclass(frozen=True)
class Claim:
    """A job held by one worker until ``lease_token`` is replaced by someone else's."""

    job_id: int
    case_id: int
    model: str
    attempt: int
    lease_token: str


def _claimable(now: object) -> object:
    return or_(
        and_(Job.state == "queued", Job.not_before <= now),
        # A running job whose lease ran out belongs to a dead (or hung) worker.
        and_(Job.state == "running", Job.lease_until < now),
    )


def claim(
    factory: sessionmaker[Session], worker_id: str, lease_s: float, models: tuple[str, ...] | None = None
) -> Claim | None:
    """Take the oldest claimable job, or ``None``.

    PostgreSQL: ``FOR UPDATE SKIP LOCKED`` lets concurrent workers pass over each other's rows.
    SQLite: the transaction starts with ``BEGIN IMMEDIATE`` (see ``db``), so select-then-update
    runs under the single write lock; the conditional update guards both anyway.
    """
    while True:
        with transaction(factory) as s:
            now = utcnow()
            stmt = select(Job).where(_claimable(now))  # type: ignore[arg-type]
            if models:
                stmt = stmt.where(Job.model.in_(models))
            job = s.scalars(stmt.order_by(Job.id).limit(1).with_for_update(skip_locked=True)).first()
            if job is None:
                return None
            if job.state == "running" and job.attempts >= job.max_attempts:
                # Its last attempt died with the worker: give up instead of looping forever.
                job.state, job.error_reason = "failed", "job.lease_expired"
                job.error_detail = f"worker {job.worker_id} lost its lease on the last attempt"
                job.lease_token = None
                job.finished_at = job.updated_at = now
                continue
            token = secrets.token_hex(16)
            job.state, job.attempts, job.lease_token, job.worker_id = "running", job.attempts + 1, token, worker_id
            job.lease_until = now + timedelta(seconds=lease_s)
            job.updated_at = now
            return Claim(job.id, job.case_id, job.model, job.attempts, token)


def _held(s: Session, c: Claim) -> Job | None:
    """The job row locked, if this claim still owns it."""
    return s.scalars(
        select(Job)
        .where(Job.id == c.job_id, Job.lease_token == c.lease_token, Job.state == "running")
        .with_for_update()
    ).first()


def heartbeat(factory: sessionmaker[Session], c: Claim, lease_s: float) -> bool:
    """Extend the lease; ``False`` when the job was reclaimed by another worker."""
    with transaction(factory) as s:
        job = _held(s, c)
        if job is None:
            return False
        job.lease_until = utcnow() + timedelta(seconds=lease_s)
        return True


def complete(factory: sessionmaker[Session], c: Claim, save: Callable[[Session, Job], int]) -> bool:
    """Run ``save`` (which stores the prediction and returns its id) and mark the job done, atomically.

    Returns ``False`` (and stores nothing) if the lease was lost: exactly one holder finishes a job.
    """
    with transaction(factory) as s:
        job = _held(s, c)
        if job is None:
            return False
        job.prediction_id = save(s, job)
        now = utcnow()
        job.state, job.lease_token, job.lease_until = "done", None, None
        job.error_reason = job.error_detail = None
        job.finished_at = job.updated_at = now
        return True


def fail(
    factory: sessionmaker[Session], c: Claim, reason: str, detail: str, retry: bool, backoff_s: float = 5.0
) -> str | None:
    """Record a failure; requeue (with back-off) while attempts remain and ``retry``. Returns the new state."""
    with transaction(factory) as s:
        job = _held(s, c)
        if job is None:
            return None
        now = utcnow()
        job.error_reason, job.error_detail = reason[:128], detail[:2000]
        job.lease_token, job.lease_until, job.updated_at = None, None, now
        if retry and job.attempts < job.max_attempts:
            job.state = "queued"
            job.not_before = now + timedelta(seconds=backoff_s * 2 ** (job.attempts - 1))
        else:
            job.state, job.finished_at = "failed", now
        return job.state


def counts(session: Session) -> dict[str, int]:
    """Jobs per state (for readiness and metrics)."""
    from sqlalchemy import func

    rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
    return {str(state): int(n) for state, n in rows}
