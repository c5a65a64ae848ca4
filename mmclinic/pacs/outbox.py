"""Durable outbox of result objects: spool files + fsync, C-STORE to each destination, retries with back-off.

Layout under the spool folder: ``pending/<name>.dcm`` with ``pending/<name>.json`` (destinations still
to serve, attempts, next attempt time, last error) and ``sent/`` once every destination accepted it.
A destination is crossed off (and the state file re-written durably) right after its C-STORE
succeeds, so a crash re-sends at most the same SOP Instance UID to one destination — never a new UID.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmclinic.config import PacsDestination, PacsSettings
from mmclinic.errors import InputError
from mmclinic.logs import event
from mmclinic.store.dicomstore import write_durably

log = logging.getLogger(__name__)
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
Sender = Callable[[bytes, PacsDestination, str], tuple[bool, str]]


def dest_key(d: PacsDestination) -> str:
    """A stable text key of a destination (stored in the state file)."""
    return f"{d.ae_title}@{d.host}:{d.port}"


def cstore_send(data: bytes, dest: PacsDestination, calling_ae: str, timeout_s: float = 30.0) -> tuple[bool, str]:
    """C-STORE one Part 10 object; ``(True, "ok")`` on Success/Warning, else ``(False, reason code)``."""
    import pydicom
    from pynetdicom import AE

    ds = pydicom.dcmread(io.BytesIO(data))
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.connection_timeout = min(timeout_s, 10.0)
    ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        return False, "pacs.destination_unreachable" if not assoc.is_rejected else "pacs.destination_rejected"
    try:
        status = assoc.send_c_store(ds)
    finally:
        assoc.release()
    code = int(getattr(status, "Status", -1)) if status else -1
    # 0x0000 success; 0xB000/0xB006/0xB007 warnings still mean the object was stored.
    if code == 0 or code in (0xB000, 0xB006, 0xB007):
        return True, "ok"
    return False, "pacs.destination_no_response" if code < 0 else f"pacs.destination_status_{code:04x}"


@dataclass
class FlushStats:
    """What one ``flush`` did."""

    sent: int = 0  # objects that reached every destination in this flush
    failed: int = 0  # destination attempts that failed (will be retried)
    waiting: int = 0  # objects not yet due


class Outbox:
    """File spool of objects to deliver; safe to share between processes that serialise on ``flush``."""

    def __init__(self, root: Path, settings: PacsSettings, sender: Sender | None = None) -> None:
        self.root, self.settings = root, settings
        self.pending_dir, self.sent_dir = root / "pending", root / "sent"
        self.sender: Sender = sender or cstore_send

    def _paths(self, folder: Path, name: str) -> tuple[Path, Path]:
        if not _NAME_RE.match(name):
            raise InputError("pacs.bad_outbox_name", "outbox names are 1-128 safe characters")
        return folder / f"{name}.dcm", folder / f"{name}.json"

    def put(self, name: str, data: bytes, destinations: list[PacsDestination] | None = None) -> bool:
        """Spool an object for every destination; ``False`` when nothing new is to be sent (idempotent).

        For a known entry, only destinations that neither received it nor wait for it are added: a
        destination configured after the result was first spooled gets it, each destination at most
        once, and always the spooled bytes (the same SOP Instance UID).
        """
        dcm, state = self._paths(self.pending_dir, name)
        keys = [dest_key(d) for d in (destinations if destinations is not None else self.settings.destinations)]
        if state.is_file() or self._paths(self.sent_dir, name)[1].is_file():
            return self._reopen(name, keys)
        write_durably(dcm, data)
        # The state file is written last: its presence marks a complete entry.
        self._write_state(state, {"remaining": keys, "delivered": [], "attempts": 0, "next_at": 0.0})
        event(log, "pacs.outbox_put", entry=name, destinations=len(keys))
        return True

    def _reopen(self, name: str, keys: list[str]) -> bool:
        """Add destinations an existing entry has not served; a sent entry goes back to pending."""
        pending_dcm, pending_state = self._paths(self.pending_dir, name)
        was_sent = not pending_state.is_file()
        src_dcm, src_state = self._paths(self.sent_dir, name) if was_sent else (pending_dcm, pending_state)
        st = json.loads(src_state.read_text())
        if "delivered" not in st:  # spooled before deliveries were recorded: who has it is unknown
            return False
        served = set(st["delivered"]) | set(st["remaining"])
        new = [k for k in keys if k not in served]
        if not new:
            return False
        st["remaining"] = st["remaining"] + new
        st["next_at"] = 0.0
        if was_sent:
            write_durably(pending_dcm, src_dcm.read_bytes())
            self._write_state(pending_state, st)  # pending state first: a crash leaves it re-sendable
            src_state.unlink()
            src_dcm.unlink()
        else:
            self._write_state(pending_state, st)
        event(log, "pacs.outbox_reopened", entry=name, destinations=len(new))
        return True

    def get(self, name: str) -> bytes | None:
        """The spooled bytes of ``name`` (pending or sent), or ``None``."""
        for folder in (self.pending_dir, self.sent_dir):
            dcm, state = self._paths(folder, name)
            if state.is_file() and dcm.is_file():
                return dcm.read_bytes()
        return None

    def pending(self) -> list[str]:
        """Names still to deliver."""
        return sorted(p.stem for p in self.pending_dir.glob("*.json")) if self.pending_dir.is_dir() else []

    def sent(self) -> list[str]:
        """Names delivered to every destination."""
        return sorted(p.stem for p in self.sent_dir.glob("*.json")) if self.sent_dir.is_dir() else []

    def state(self, name: str) -> dict[str, Any]:
        """The state record of a pending entry."""
        return dict(json.loads(self._paths(self.pending_dir, name)[1].read_text()))

    @staticmethod
    def _write_state(path: Path, state: dict[str, Any]) -> None:
        write_durably(path, json.dumps(state, sort_keys=True).encode())

    def _backoff(self, attempts: int) -> float:
        return float(min(self.settings.retry_max_s, self.settings.retry_initial_s * 2 ** max(0, attempts - 1)))

    def flush(self, now: float | None = None) -> FlushStats:
        """Try every due entry once; a destination that fails is retried after an exponential back-off."""
        stats = FlushStats()
        by_key = {dest_key(d): d for d in self.settings.destinations}
        for name in self.pending():
            dcm, state_path = self._paths(self.pending_dir, name)
            if not dcm.is_file() and self._paths(self.sent_dir, name)[0].is_file():
                self._move_to_sent(name, state_only=True)  # a crash interrupted the move: finish it
                continue
            st = json.loads(state_path.read_text())
            t = time.time() if now is None else now
            if st["next_at"] > t:
                stats.waiting += 1
                continue
            data = dcm.read_bytes()
            error = ""
            for key in list(st["remaining"]):
                dest = by_key.get(key)
                if dest is None:  # removed from the configuration: dropped, not delivered (see put)
                    st["remaining"].remove(key)
                    self._write_state(state_path, st)
                    event(
                        log, "pacs.outbox_dropped", level=logging.WARNING, entry=name, reason="pacs.destination_removed"
                    )
                    continue
                else:
                    try:
                        ok, reason = self.sender(data, dest, self.settings.ae_title)
                    except Exception as exc:  # a network error is a failed attempt, not a crash
                        ok, reason = False, f"pacs.send_error.{type(exc).__name__}"
                if ok:
                    st["remaining"].remove(key)
                    st.setdefault("delivered", []).append(key)
                    self._write_state(state_path, st)
                else:
                    error = reason
                    stats.failed += 1
            if st["remaining"]:
                st["attempts"] += 1
                st["next_at"] = t + self._backoff(st["attempts"])
                st["last_error"] = error
                self._write_state(state_path, st)
                event(
                    log, "pacs.outbox_retry", level=logging.WARNING, entry=name, reason=error, attempts=st["attempts"]
                )
                continue
            self._move_to_sent(name)
            stats.sent += 1
            event(log, "pacs.outbox_sent", entry=name)
        return stats

    def _move_to_sent(self, name: str, state_only: bool = False) -> None:
        self.sent_dir.mkdir(parents=True, exist_ok=True)
        src_dcm, src_state = self._paths(self.pending_dir, name)
        dst_dcm, dst_state = self._paths(self.sent_dir, name)
        if not state_only:
            os.replace(src_dcm, dst_dcm)
        os.replace(src_state, dst_state)  # state last: a crash in between leaves a re-sendable pending entry
        for folder in (self.sent_dir, self.pending_dir):
            fd = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def cecho(dest: PacsDestination, calling_ae: str, timeout_s: float = 10.0) -> tuple[bool, str]:
    """C-ECHO a peer; ``(True, "ok")`` on Success."""
    from pynetdicom import AE

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
    if not assoc.is_established:
        return False, "pacs.destination_rejected" if assoc.is_rejected else "pacs.destination_unreachable"
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = int(getattr(status, "Status", -1)) if status else -1
    return (True, "ok") if code == 0 else (False, f"pacs.echo_status_{code:04x}" if code >= 0 else "pacs.no_response")
