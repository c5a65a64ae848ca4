"""The listener process: SCP + periodic tick (quiet studies → jobs, finished jobs → SR in the outbox → send).

Hand-off with the worker: when the trigger queues a job it writes ``watch/<job>.json`` in the spool;
each tick looks at watched jobs and, once a job is ``done``, builds the SR from the stored prediction
and puts it in the outbox. Watch files make the hand-off survive a listener restart, and the worker
needs to know nothing about PACS.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from mmclinic.config import Settings
from mmclinic.errors import MmclinicError
from mmclinic.logs import event
from mmclinic.pacs.export import build_objects
from mmclinic.pacs.listener import StorageSCP
from mmclinic.pacs.outbox import FlushStats, Outbox
from mmclinic.pacs.receive import Receiver, listener_actor
from mmclinic.pacs.trigger import StudyTracker, complete_study
from mmclinic.store.audit import record
from mmclinic.store.db import transaction
from mmclinic.store.dicomstore import write_durably
from mmclinic.store.models import Job, PredictionRow

log = logging.getLogger(__name__)


@dataclass
class TickStats:
    """What one tick did."""

    jobs_queued: int = 0
    exported: int = 0
    jobs_failed: int = 0
    outbox: FlushStats | None = None


def spool_dir(settings: Settings) -> Path:
    """Root of the PACS spool (outbox + watch files)."""
    return settings.pacs.outbox_dir or settings.data_dir / "pacs"


class PacsService:
    """Everything ``mmclinic pacs listen`` runs; tests drive ``tick`` directly."""

    def __init__(self, settings: Settings, factory: sessionmaker[Session]) -> None:
        self.settings, self.factory = settings, factory
        root = spool_dir(settings)
        self.watch_dir = root / "watch"
        self.outbox = Outbox(root / "outbox", settings.pacs)
        self.tracker = StudyTracker(settings.pacs.study_quiet_seconds)
        self.receiver = Receiver(factory, settings.data_dir, settings.pacs, on_stored=self.tracker.touch)
        self.scp = StorageSCP(settings.pacs, self.receiver, factory)
        self._tick_lock = threading.Lock()

    def start(self) -> None:
        recovered = self.tracker.recover(self.factory)
        self.scp.start()
        event(log, "pacs.started", recovered_studies=recovered, pending=len(self.outbox.pending()))

    def stop(self) -> None:
        self.scp.stop()

    def watch(self, job_id: int) -> None:
        """Remember to export the result of ``job_id`` (durable, idempotent)."""
        path = self.watch_dir / f"{job_id}.json"
        if not path.is_file():
            write_durably(path, json.dumps({"job_id": job_id}).encode())

    def watched(self) -> list[int]:
        return sorted(int(p.stem) for p in self.watch_dir.glob("*.json")) if self.watch_dir.is_dir() else []

    def export_prediction(self, prediction_id: int) -> list[str]:
        """Build the prediction's result objects and spool them; returns the outbox names."""
        with transaction(self.factory) as s:
            row = s.get(PredictionRow, prediction_id)
            if row is None:
                return []
            objects = build_objects(s, row, with_seg=self.settings.pacs.write_seg)
            record(s, listener_actor(row.site, "export"), "pacs.export", f"prediction/{row.id}", "ok")
        for obj in objects:
            self.outbox.put(obj.name, obj.data)
        return [o.name for o in objects]

    def _check_watched(self, stats: TickStats) -> None:
        for job_id in self.watched():
            with self.factory() as s:
                job = s.get(Job, job_id)
                state, pred_id = (job.state, job.prediction_id) if job is not None else ("missing", None)
            if state in ("queued", "running"):
                continue
            if state == "done" and pred_id is not None:
                try:
                    self.export_prediction(pred_id)
                    stats.exported += 1
                except MmclinicError as exc:  # e.g. source files gone: log it, do not retry for ever
                    event(log, "pacs.export_failed", level=logging.WARNING, job=job_id, reason=exc.reason)
                except Exception:  # a fault (database down, a bug): retried next tick; other jobs go on
                    log.exception("export of a finished job failed")
                    event(log, "pacs.export_failed", level=logging.WARNING, job=job_id, reason="pacs.export_error")
                    continue
            else:
                stats.jobs_failed += 1
                event(log, "pacs.job_not_done", level=logging.WARNING, job=job_id, state=state)
            (self.watch_dir / f"{job_id}.json").unlink(missing_ok=True)

    def tick(self, now: float | None = None) -> TickStats:
        """One round: complete quiet studies, export finished jobs, flush the outbox. Never raises."""
        stats = TickStats()
        with self._tick_lock:
            for study_uid in self.tracker.due(now):
                try:
                    job_id = complete_study(self.factory, study_uid, self.settings.model)
                except Exception:  # one bad study must not stop the others; it is retried on the next instance
                    log.exception("study-complete handling failed")
                    continue
                if job_id is not None:
                    self.watch(job_id)
                    stats.jobs_queued += 1
            try:
                self._check_watched(stats)
            except Exception:
                log.exception("checking finished jobs failed")
            try:
                stats.outbox = self.outbox.flush()
            except Exception:
                log.exception("outbox flush failed")
        return stats

    def run(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set, ticking every ``poll_seconds``."""
        self.start()
        try:
            while not stop.wait(self.settings.pacs.poll_seconds):
                self.tick()
        finally:
            self.stop()
