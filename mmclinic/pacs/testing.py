"""Test support for PACS suites (unit and integration): a migrated store, settings, synthetic study, an SCU."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from mmclinic.config import PacsDestination, PacsPeer, PacsSettings, Settings
from mmclinic.store import db as dbmod

SCU_AE = "TESTSCU"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Store:
    engine: Engine
    factory: sessionmaker[Session]
    data_dir: Path


def open_store(tmp_path: Path, database_url: str | None = None) -> Store:
    """A migrated store under ``tmp_path/var``: its own SQLite file, or the database at ``database_url``."""
    data_dir = tmp_path / "var"
    data_dir.mkdir(parents=True, exist_ok=True)
    engine = dbmod.create_db_engine(database_url or f"sqlite:///{(data_dir / 'mmclinic.db').as_posix()}")
    dbmod.upgrade(engine)
    return Store(engine, dbmod.session_factory(engine), data_dir)


def make_settings(data_dir: Path, port: int = 0, **pacs: Any) -> Settings:
    base: dict[str, Any] = {
        "ae_title": "MMCLINIC",
        "host": "127.0.0.1",
        "port": port,
        "allowed_peers": [PacsPeer(ae_title=SCU_AE, host="127.0.0.1", site="s1")],
        "study_quiet_seconds": 0.0,
        "min_free_disk_mb": 1,
        "retry_initial_s": 0.0,
    }
    base.update(pacs)
    return Settings(
        data_dir=data_dir, database_url=f"sqlite:///{(data_dir / 'mmclinic.db').as_posix()}", pacs=PacsSettings(**base)
    )


def dest(port: int, ae: str = "PACS") -> PacsDestination:
    return PacsDestination(ae_title=ae, host="127.0.0.1", port=port)


def scu_store(port: int, files: list[Path], calling: str = SCU_AE, called: str = "MMCLINIC") -> list[int]:
    """C-STORE files over one association; the statuses (or raise if the association fails)."""
    import pydicom
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ds0 = pydicom.dcmread(files[0], stop_before_pixels=True)
    ae.add_requested_context(ds0.SOPClassUID, [ds0.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        raise ConnectionError("association rejected" if assoc.is_rejected else "association failed")
    out = []
    try:
        for f in files:
            st = assoc.send_c_store(pydicom.dcmread(f))
            out.append(int(st.Status) if st else -1)
    finally:
        assoc.release()
    return out


def scu_echo(port: int, calling: str = SCU_AE, called: str = "MMCLINIC") -> int | None:
    """C-ECHO status, or None when the association was refused."""
    from pynetdicom import AE

    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    if not assoc.is_established:
        return None
    try:
        st = assoc.send_c_echo()
        return int(st.Status) if st else -1
    finally:
        assoc.release()


class RecordingSCP:
    """A destination PACS stand-in: accepts any storage SOP class and records (SOP UID, bytes) per C-STORE."""

    def __init__(self, port: int, ae_title: str = "PACS") -> None:
        self.port, self.ae_title = port, ae_title
        self.received: list[tuple[str, bytes]] = []
        self._server: Any = None

    def start(self) -> RecordingSCP:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        def on_store(ev: Any) -> int:
            self.received.append((str(ev.request.AffectedSOPInstanceUID), ev.encoded_dataset()))
            return 0x0000

        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        self._server = ae.start_server(
            ("127.0.0.1", self.port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
        )
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None
