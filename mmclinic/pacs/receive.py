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
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy import Connection, Engine, bindparam, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from mmclinic.config import PacsSettings
from mmclinic.errors import ConflictError, InputError, MmclinicError, ResourceExhaustedError
from mmclinic.logs import event
from mmclinic.store.audit import Actor, record
from mmclinic.store.db import transaction
from mmclinic.store.dicomstore import (
    ParsedInstance,
    StagedFile,
    instance_path,
    parse_instance,
    record_instance,
)
from mmclinic.store.models import Instance, Job, Series, Study

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
_SERIES_BY_UID = (
    select(Series.id, Study.study_uid, Study.site)
    .join(Study, Series.study_id == Study.id)
    .where(Series.series_uid == bindparam("uid"))
)
_INSTANCE_BY_UID = select(Instance.sha256, Instance.series_id).where(Instance.sop_uid == bindparam("uid"))
_INSERT_INSTANCE = insert(Instance)
# Received bytes are staged here (same file system as their final folder) until they may be published.
INCOMING_DIR = ".incoming"
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
    """Free disk and queued-job limits, both cached (one look per ``ttl_s``, not per instance).

    Between two looks at the disk, the bytes admitted meanwhile are taken off the cached free
    space, so a burst cannot run past the threshold by more than what was measured.
    """

    def __init__(self, factory: sessionmaker[Session], data_dir: Path, settings: PacsSettings, ttl_s: float = 2.0):
        self._factory, self._dir, self._settings, self._ttl = factory, data_dir, settings, ttl_s
        self._lock = threading.Lock()
        self._queued = 0
        self._checked = -1e9
        self._free = 0
        self._disk_checked = -1e9

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

    def free_bytes(self, incoming: int = 0) -> int:
        """Free disk space left once ``incoming`` more bytes are written (cached, see the class)."""
        with self._lock:
            now = time.monotonic()
            if now - self._disk_checked > self._ttl:
                self._dir.mkdir(parents=True, exist_ok=True)
                self._free = shutil.disk_usage(self._dir).free
                self._disk_checked = now
            self._free -= incoming
            return self._free

    def check(self, incoming: int = 0) -> None:
        """Raise ``ResourceExhaustedError`` when a configured threshold is crossed."""
        free_mb = self.free_bytes(incoming) / (1 << 20)
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
        self._engine: Engine = factory.kw["bind"]
        self.guard = ResourceGuard(factory, data_dir, settings)
        self.on_stored = on_stored

    def warm_up(self) -> None:
        """Do once, before the first association, what the first instance would otherwise pay for.

        The resource guard's first looks (disk, queued jobs), and one rehearsal of recording an
        instance of a new study, rolled back, so SQLAlchemy has compiled every statement of both
        paths (``record_instance`` and the short one). Measured here: the first C-STORE of a new
        listener took 77–93 ms without it and 10–13 ms with it (the ones after it 4–9 ms).
        """
        self.guard.check()
        rehearsal = ParsedInstance("0.0", "0.0.0", "0.0.0.0", "", "0" * 64, b"")
        with self._engine.connect() as conn, conn.begin() as tx:
            for sop_uid in ("0.0.0.0", "0.0.0.1"):  # a new series first, then the short path
                self._record(conn, "", replace(rehearsal, sop_uid=sop_uid), self.data_dir / "warm-up")
            tx.rollback()

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
        self.guard.check(len(data))
        # Written (and its device write started) first, so the disk works while this parses and queries.
        staging = StagedFile(data, self.data_dir / "dicom" / INCOMING_DIR)
        try:
            parsed = parse_instance(data)
            if context_sop_class and parsed.sop_class != context_sop_class:
                raise InputError("pacs.sop_class_mismatch", "dataset SOP Class differs from the presentation context")
            if request_sop_uid and parsed.sop_uid != request_sop_uid:
                raise InputError("pacs.sop_instance_mismatch", "dataset SOP Instance UID differs from the request")
            path = instance_path(self.data_dir, parsed)
            for attempt in range(2):
                try:
                    with self._engine.begin() as conn:
                        created = self._record(conn, site, parsed, path)
                        # The file is durable (file + folder fsync'ed) before the row commits, and so
                        # before Success; a crash in between leaves a file that no row names yet, and
                        # the sender's retry then finds no row and writes the file again.
                        if created or not path.is_file():
                            staging.publish(path)
                    return StoreResult(SUCCESS, "ok", parsed.study_uid, created=created)
                except IntegrityError:  # a parallel association stored the same instance first (PostgreSQL)
                    if attempt:
                        raise
            raise AssertionError("unreachable")
        finally:
            staging.discard()

    @staticmethod
    def _record(conn: Connection, site: str, parsed: ParsedInstance, path: Path) -> bool:
        """Row for the instance (locks it until commit); True when new. Conflicting bytes raise.

        Every instance after a series' first takes the short way: one query for the series and its
        study, one for the instance, one insert, as prepared Core statements on the connection (an
        ORM session costs several times the CPU per instance). It applies ``record_instance``'s
        rules; anything else (new series, another study or site) goes through ``record_instance``
        itself, in a session joined to this transaction.
        """
        series = conn.execute(_SERIES_BY_UID, {"uid": parsed.series_uid}).first()
        if series is None or series.study_uid != parsed.study_uid or series.site != site:
            # Bound to a connection inside a transaction, the session joins it and never commits it.
            with Session(bind=conn) as s:
                try:
                    _, created = record_instance(
                        s, site, parsed.study_uid, parsed.series_uid, parsed.sop_uid, parsed.modality,
                        parsed.sha256, str(path), len(parsed.data),
                    )  # fmt: skip
                except ConflictError as exc:
                    raise ConflictError("pacs.instance_conflict", exc.reason) from exc
                s.flush()
            return created
        known = conn.execute(_INSTANCE_BY_UID, {"uid": parsed.sop_uid}).first()
        if known is not None:
            if known.sha256 != parsed.sha256 or known.series_id != series.id:
                raise ConflictError("pacs.instance_conflict", "conflict.instance_changed")
            return False
        conn.execute(
            _INSERT_INSTANCE,
            {
                "series_id": series.id, "sop_uid": parsed.sop_uid, "sha256": parsed.sha256,
                "storage_path": str(path), "size_bytes": len(parsed.data),
            },
        )  # fmt: skip
        return True

    def _audit(self, site: str, client: str, action: str, outcome: str) -> None:
        try:
            with transaction(self.factory) as s:
                record(s, listener_actor(site, client), action, "pacs/instance", outcome)
        except Exception:
            log.exception("audit event %s could not be written", action)
