"""C-STORE receive logic without networking: validate, resource limits, durable write, store row, DICOM status.

Policy for a repeated SOP Instance UID: same bytes → Success and nothing new is written; different
bytes → the first copy is kept (a prediction may already reference it), the sender gets failure
0xC001 ``pacs.instance_conflict`` and an audit event records the attempt.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mmclinic.config import PacsSettings
from mmclinic.errors import ConflictError, InputError, MmclinicError, ResourceExhaustedError
from mmclinic.logs import event
from mmclinic.store.audit import Actor, record
from mmclinic.store.db import transaction
from mmclinic.store.dicomstore import instance_path, parse_instance, register_instance, write_durably
from mmclinic.store.models import Instance, Job

log = logging.getLogger(__name__)

SUCCESS = 0x0000
# Failure statuses of the Storage Service Class (PS3.4 Table B.2-1), by reason code.
STATUS_BY_REASON: dict[str, int] = {
    "resource.disk_full": 0xA700,
    "resource.queue_full": 0xA700,
    "dicom.missing_uid": 0xA900,
    "pacs.sop_class_mismatch": 0xA900,
    "pacs.sop_instance_mismatch": 0xA900,
    "dicom.unreadable": 0xC000,
    "pacs.instance_conflict": 0xC001,
    "pacs.store_failed": 0xC002,
}
ACCEPTED_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1")  # CT, Enhanced CT


@dataclass(frozen=True)
class StoreResult:
    """What one C-STORE did: the status to return, the reason code, and the study (for the trigger)."""

    status: int
    reason: str = "ok"
    study_uid: str | None = None
    created: bool = False


def listener_actor(site: str, client: str) -> Actor:
    """Audit identity of the listener (the peer's AE title and host go in ``client``; no patient data)."""
    return Actor(name="pacs:listener", role="system", site=site, client=client[:128])


class ResourceGuard:
    """Free disk and queued-job limits, with the queue count cached (one query per ``ttl_s``, not per instance)."""

    def __init__(self, factory: sessionmaker[Session], data_dir: Path, settings: PacsSettings, ttl_s: float = 2.0):
        self._factory, self._dir, self._settings, self._ttl = factory, data_dir, settings, ttl_s
        self._lock = threading.Lock()
        self._queued = 0
        self._checked = -1e9

    def queued_jobs(self) -> int:
        with self._lock:
            now = time.monotonic()
            if now - self._checked > self._ttl:
                with self._factory() as s:
                    self._queued = int(
                        s.scalar(select(func.count()).select_from(Job).where(Job.state == "queued")) or 0
                    )
                self._checked = now
            return self._queued

    def check(self) -> None:
        """Raise ``ResourceExhaustedError`` when a configured threshold is crossed."""
        self._dir.mkdir(parents=True, exist_ok=True)
        free_mb = shutil.disk_usage(self._dir).free / (1 << 20)
        if free_mb < self._settings.min_free_disk_mb:
            raise ResourceExhaustedError(
                "resource.disk_full", f"{free_mb:.0f} MB free < {self._settings.min_free_disk_mb}"
            )
        if self.queued_jobs() >= self._settings.max_queued_jobs:
            raise ResourceExhaustedError("resource.queue_full", f"{self._settings.max_queued_jobs} jobs queued")


class Receiver:
    """Stores received instances for one listener; thread-safe (each call uses its own transaction)."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        data_dir: Path,
        settings: PacsSettings,
        on_stored: Callable[[str], None] | None = None,
    ) -> None:
        self.factory, self.data_dir, self.settings = factory, data_dir, settings
        self.guard = ResourceGuard(factory, data_dir, settings)
        self.on_stored = on_stored

    def store(
        self, data: bytes, site: str, client: str, context_sop_class: str = "", request_sop_uid: str = ""
    ) -> StoreResult:
        """Handle one Part 10 encoded instance; never raises (every outcome is a DICOM status)."""
        try:
            result = self._store(data, site, context_sop_class, request_sop_uid)
        except MmclinicError as exc:
            result = StoreResult(STATUS_BY_REASON.get(exc.reason, 0xC000), exc.reason)
            if exc.reason == "pacs.instance_conflict":
                self._audit(site, client, "pacs.instance_conflict", exc.detail)
        except Exception:  # database or filesystem fault: the sender may retry; the listener keeps serving
            log.exception("C-STORE could not be stored")
            result = StoreResult(STATUS_BY_REASON["pacs.store_failed"], "pacs.store_failed")
        if result.status != SUCCESS:
            event(log, "pacs.store_failed", level=logging.WARNING, reason=result.reason, status=hex(result.status))
        elif result.created and result.study_uid and self.on_stored is not None:
            self.on_stored(result.study_uid)
        return result

    def _store(self, data: bytes, site: str, context_sop_class: str, request_sop_uid: str) -> StoreResult:
        self.guard.check()
        parsed = parse_instance(data)
        sop_class = _sop_class(data)
        if context_sop_class and sop_class != context_sop_class:
            raise InputError("pacs.sop_class_mismatch", "dataset SOP Class differs from the presentation context")
        if request_sop_uid and parsed.sop_uid != request_sop_uid:
            raise InputError("pacs.sop_instance_mismatch", "dataset SOP Instance UID differs from the request")
        path = instance_path(self.data_dir, parsed)
        for attempt in range(2):
            try:
                with transaction(self.factory) as s:
                    existed = s.scalar(select(Instance.id).where(Instance.sop_uid == parsed.sop_uid)) is not None
                    try:
                        register_instance(
                            s, site, parsed.study_uid, parsed.series_uid, parsed.sop_uid, parsed.modality,
                            parsed.sha256, str(path), len(data),
                        )  # fmt: skip
                    except ConflictError as exc:
                        raise ConflictError("pacs.instance_conflict", exc.reason) from exc
                    # The file is durable (file + folder fsync) before the row commits and before Success.
                    if not existed or not path.is_file():
                        write_durably(path, data)
                return StoreResult(SUCCESS, "ok", parsed.study_uid, created=not existed)
            except IntegrityError:  # a parallel association stored the same instance first (PostgreSQL)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _audit(self, site: str, client: str, action: str, outcome: str) -> None:
        try:
            with transaction(self.factory) as s:
                record(s, listener_actor(site, client), action, "pacs/instance", outcome)
        except Exception:
            log.exception("audit event %s could not be written", action)


def _sop_class(data: bytes) -> str:
    """SOP Class UID of a Part 10 file (file meta first, then the dataset)."""
    import io

    import pydicom

    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPClassUID"])
    meta = getattr(ds, "file_meta", None)
    return str(getattr(ds, "SOPClassUID", "") or getattr(meta, "MediaStorageSOPClassUID", "") or "")
