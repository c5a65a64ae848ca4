"""The inference worker: claims jobs, runs them through an engine, stores predictions exactly once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session, sessionmaker

from mmclinic.case import Case, Prediction
from mmclinic.errors import InputError, MmclinicError
from mmclinic.logs import event
from mmclinic.store import queue
from mmclinic.store.audit import Actor, record
from mmclinic.store.cases import to_case
from mmclinic.store.db import transaction
from mmclinic.store.models import CaseRow, Job
from mmclinic.store.predictions import find_existing, save_prediction

log = logging.getLogger(__name__)


class Engine(Protocol):
    """The part of ``mmclinic.engine.InferenceEngine`` the worker needs (no torch import here)."""

    @property
    def weights_sha256(self) -> str: ...

    def prepare(self, case: Case) -> Any: ...

    def predict_prepared(self, items: list[Any]) -> list[Prediction]: ...


@dataclass
class WorkerStats:
    """What one worker run did."""

    done: int = 0
    failed: int = 0
    retried: int = 0
    lost: int = 0


class _Heartbeat:
    """Extends a claim's lease from a thread while the (possibly long) inference runs."""

    def __init__(self, factory: sessionmaker[Session], claim: queue.Claim, lease_s: float) -> None:
        self._factory, self._claim, self._lease_s = factory, claim, lease_s
        self._stop = threading.Event()
        self.lost = False
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{claim.job_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._lease_s / 3):
            try:
                if not queue.heartbeat(self._factory, self._claim, self._lease_s):
                    self.lost = True
                    return
            except Exception:  # a transient database error: the next beat may succeed
                log.warning("heartbeat for job %s failed", self._claim.job_id, exc_info=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _actor(worker_id: str, site: str) -> Actor:
    return Actor(name=f"worker:{worker_id}", role="system", site=site, client="worker")


def process(
    factory: sessionmaker[Session],
    engine: Engine,
    claim: queue.Claim,
    worker_id: str,
    lease_s: float,
    backoff_s: float = 5.0,
) -> str:
    """Run one claimed job to an outcome: ``done``, ``failed``, ``queued`` (retry) or ``lost``."""
    with transaction(factory) as s:
        row = s.get(CaseRow, claim.case_id)
        assert row is not None  # foreign key
        fp, site = row.input_fingerprint, row.site
        existing = find_existing(s, fp, engine.weights_sha256)
        case = None if existing is not None else to_case(s, row)
        record(s, _actor(worker_id, site), "case.read", f"case/{row.case_key}")

    def _save(s: Session, job: Job, pred: Prediction | None) -> int:
        case_row = s.get(CaseRow, job.case_id)
        assert case_row is not None
        if pred is None:  # already predicted under these weights (another job, or an earlier attempt)
            again = find_existing(s, fp, engine.weights_sha256)
            assert again is not None
            return again.id
        saved, created = save_prediction(s, case_row, pred)
        record(
            s, _actor(worker_id, site), "prediction.create" if created else "prediction.reuse", f"prediction/{saved.id}"
        )
        return saved.id

    try:
        with _Heartbeat(factory, claim, lease_s) as beat:
            pred: Prediction | None = None
            if case is not None:
                prepared = engine.prepare(case)
                pred = engine.predict_prepared([prepared])[0]
            if beat.lost:
                return "lost"
    except InputError as exc:
        # Bad input does not get better by retrying.
        state = queue.fail(factory, claim, exc.reason, exc.detail, retry=False)
        event(log, "job.failed", job=claim.job_id, reason=exc.reason, attempt=claim.attempt)
        return state or "lost"
    except Exception as exc:
        reason = exc.reason if isinstance(exc, MmclinicError) else "job.engine_error"
        detail = exc.detail if isinstance(exc, MmclinicError) else f"{type(exc).__name__}: {exc}"
        state = queue.fail(factory, claim, reason, detail, retry=True, backoff_s=backoff_s)
        event(
            log, "job.error", level=logging.WARNING, job=claim.job_id, reason=reason, attempt=claim.attempt, state=state
        )
        return state or "lost"
    if not queue.complete(factory, claim, lambda s, job: _save(s, job, pred)):
        event(log, "job.lease_lost", level=logging.WARNING, job=claim.job_id)
        return "lost"
    event(log, "job.done", job=claim.job_id, attempt=claim.attempt, reused=pred is None)
    return "done"


def run_worker(
    factory: sessionmaker[Session],
    engine: Engine,
    worker_id: str,
    lease_s: float = 60.0,
    poll_s: float = 1.0,
    backoff_s: float = 5.0,
    models: tuple[str, ...] | None = None,
    stop: threading.Event | None = None,
    max_jobs: int | None = None,
    until_idle: bool = False,
    on_outcome: Callable[[int, str], None] | None = None,
) -> WorkerStats:
    """Claim and process jobs until ``stop`` is set, ``max_jobs`` were handled, or (``until_idle``) none is left."""
    stats = WorkerStats()
    stop = stop or threading.Event()
    handled = 0
    event(log, "worker.start", worker=worker_id, lease_s=lease_s)
    while not stop.is_set() and (max_jobs is None or handled < max_jobs):
        try:
            claim = queue.claim(factory, worker_id, lease_s, models)
        except Exception:  # the database may be restarting; keep the worker alive
            log.warning("claim failed; retrying in %.1fs", poll_s, exc_info=True)
            stop.wait(poll_s)
            continue
        if claim is None:
            if until_idle:
                break
            stop.wait(poll_s)
            continue
        try:
            outcome = process(factory, engine, claim, worker_id, lease_s, backoff_s)
        except Exception:  # storing the outcome failed; the lease will expire and the job be retried
            log.exception("job %s could not be finished", claim.job_id)
            outcome = "lost"
        handled += 1
        if outcome == "done":
            stats.done += 1
        elif outcome == "failed":
            stats.failed += 1
        elif outcome == "queued":
            stats.retried += 1
        else:
            stats.lost += 1
        if on_outcome is not None:
            on_outcome(claim.job_id, outcome)
    event(log, "worker.stop", worker=worker_id, done=stats.done, failed=stats.failed)
    return stats
