"""The Storage SCP over real associations: echo, store, allow-list rejections (audited), bad input, still serving."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy import select

from mmclinic.config import PacsPeer
from mmclinic.pacs.service import PacsService
from mmclinic.pacs.testing import SCU_AE, Store, make_settings, scu_echo, scu_store
from mmclinic.store.models import AuditEvent, Instance


@pytest.fixture
def service(store: Store) -> Iterator[PacsService]:
    peers = [PacsPeer(ae_title=SCU_AE, host="127.0.0.1", site="s1"), PacsPeer(ae_title="FARAWAY", host="127.0.0.2")]
    svc = PacsService(make_settings(store.data_dir, allowed_peers=peers), store.factory)
    svc.start()
    yield svc
    svc.stop()


def _rejections(store: Store) -> list[tuple[str, str]]:
    with store.factory() as s:
        rows = s.scalars(select(AuditEvent).where(AuditEvent.action == "pacs.association")).all()
    return [(r.resource, r.outcome) for r in rows]


def test_echo_and_store(service: PacsService, store: Store, study_files: list[Path]) -> None:
    port = service.scp.port
    assert scu_echo(port) == 0
    assert scu_store(port, study_files[:4]) == [0, 0, 0, 0]
    with store.factory() as s:
        assert len(s.scalars(select(Instance)).all()) == 4
    assert service.tracker.waiting() == [pydicom.dcmread(study_files[0]).StudyInstanceUID]


def test_allow_list_rejects_and_audits(service: PacsService, store: Store) -> None:
    port = service.scp.port
    assert scu_echo(port, calling="STRANGER") is None
    assert scu_echo(port, calling="FARAWAY") is None  # known AE, but it must come from 127.0.0.2
    assert scu_echo(port, called="NOTUS") is None
    assert _rejections(store) == [
        ("ae/STRANGER", "pacs.calling_ae_unknown"),
        ("ae/FARAWAY", "pacs.peer_host_mismatch"),
        ("ae/TESTSCU", "pacs.called_ae_unknown"),
    ]
    assert scu_echo(port) == 0


def test_disallowed_sop_class_is_not_accepted(service: PacsService, study_files: list[Path]) -> None:
    ds = pydicom.dcmread(study_files[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"  # MR Image Storage
    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", service.scp.port, ae_title="MMCLINIC")
    # The only proposed context is refused, so the association is not usable for MR.
    if assoc.is_established:
        assert not assoc.accepted_contexts
        with pytest.raises(ValueError):
            assoc.send_c_store(ds)
        assoc.release()
    else:  # pynetdicom's requestor gives up on an association without a usable context
        assert assoc.is_aborted or assoc.is_rejected
    assert scu_echo(service.scp.port) == 0


def test_malformed_dataset_gets_failure_and_listener_keeps_serving(
    service: PacsService, store: Store, study_files: list[Path]
) -> None:
    ds = pydicom.dcmread(study_files[0])
    del ds.StudyInstanceUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", service.scp.port, ae_title="MMCLINIC")
    assert assoc.is_established
    status = assoc.send_c_store(ds)
    assoc.release()
    assert status.Status == 0xA900 and status.ErrorComment == "dicom.missing_uid"
    assert scu_echo(service.scp.port) == 0
    assert scu_store(service.scp.port, study_files[:1]) == [0]


def _counting_short_paths(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], list[int]]:
    """Counters of P-DATA read directly (split_pdvs calls) and responses sent directly (p_data_tf_bytes calls)."""
    from mmclinic.pacs import acceptor

    reads: list[int] = []
    sends: list[int] = []
    split, encode = acceptor.split_pdvs, acceptor.p_data_tf_bytes

    def counted_split(body: memoryview) -> object:
        reads.append(len(body))
        return split(body)

    def counted_encode(context_id: int, value: bytes) -> bytes:
        sends.append(len(value))
        return encode(context_id, value)

    monkeypatch.setattr(acceptor, "split_pdvs", counted_split)
    monkeypatch.setattr(acceptor, "p_data_tf_bytes", counted_encode)
    return reads, sends


def test_p_data_is_read_and_answered_directly_unless_pynetdicom_handlers_watch_it(
    service: PacsService, store: Store, study_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    reads, sends = _counting_short_paths(monkeypatch)
    assert scu_store(service.scp.port, study_files[:2]) == [0, 0]
    assert len(reads) >= 2  # command and data of both instances came the short way
    assert len(sends) == 2  # and both responses left from the handler's thread
    # With pynetdicom's DEBUG log on, its summary handlers stay bound, and they see every PDU.
    reads.clear()
    sends.clear()
    pynetdicom_log = logging.getLogger("pynetdicom")
    level = pynetdicom_log.level
    pynetdicom_log.setLevel(logging.DEBUG)  # setLevel, not the attribute: it clears the level cache
    try:
        assert scu_store(service.scp.port, study_files[2:4]) == [0, 0]
    finally:
        pynetdicom_log.setLevel(level)
    assert reads == [] and sends == []
    with store.factory() as s:
        stored = {i.sop_uid: i.storage_path for i in s.scalars(select(Instance)).all()}
    assert len(stored) == 4
    for path in study_files[:4]:  # both paths stored every instance intact
        sent = pydicom.dcmread(path)
        assert pydicom.dcmread(stored[sent.SOPInstanceUID]).PixelData == sent.PixelData


def test_a_broken_p_data_pdu_aborts_its_association_only(service: PacsService, study_files: list[Path]) -> None:
    ae = AE(ae_title=SCU_AE)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", service.scp.port, ae_title="MMCLINIC")
    assert assoc.is_established
    cx = assoc.accepted_contexts[0].context_id
    body = (100).to_bytes(4, "big") + bytes([cx]) + b"\x03" + b"\0" * 10  # the item claims 100 bytes, has 11
    assoc.dul.socket.send(b"\x04\x00" + len(body).to_bytes(4, "big") + body)
    deadline = time.monotonic() + 5
    while not assoc.is_aborted and time.monotonic() < deadline:
        time.sleep(0.02)
    assert assoc.is_aborted  # the listener aborted it (pynetdicom's answer to an invalid PDU)
    assert scu_echo(service.scp.port) == 0
    assert scu_store(service.scp.port, study_files[:1]) == [0]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors through /proc")
def test_associations_leave_no_descriptors_behind(service: PacsService, study_files: list[Path]) -> None:
    # Each association's DUL owns a wake-up socket pair; it must be closed when the association ends.
    port = service.scp.port
    assert scu_echo(port) == 0  # first association: lazily created pools and caches
    before = _open_fds()
    for _ in range(5):
        assert scu_echo(port) == 0
        assert scu_store(port, study_files[:1]) == [0]
    deadline = time.monotonic() + 5
    while _open_fds() > before and time.monotonic() < deadline:  # association threads wind down
        time.sleep(0.05)
    assert _open_fds() <= before


def test_bulk_socket_reads_whole_pdus_and_stops_at_close() -> None:
    from mmclinic.pacs.acceptor import bulk_socket_class

    a, b = socket.socketpair()
    with a, b:
        wrapped = bulk_socket_class().__new__(bulk_socket_class())
        wrapped.socket = a
        payload = bytes(range(256)) * 1000
        sender = threading.Thread(target=lambda: (b.sendall(payload), b.close()))
        sender.start()
        assert wrapped.recv(100_000) == payload[:100_000]  # arrives in many segments, one buffer
        assert wrapped.recv(500_000) == payload[100_000:]  # the peer closed early: what arrived
        sender.join()
    c, d = socket.socketpair()
    with c, d:
        wrapped.socket = c
        payload = bytes(range(256)) * 20_000  # 5 MB: past the first buffer, so it grows
        sender = threading.Thread(target=lambda: (d.sendall(payload), d.close()))
        sender.start()
        # A length announced by the peer (1 TiB) is not allocated up front: what arrives is returned.
        assert wrapped.recv(1 << 40) == payload
        sender.join()


def test_enhanced_ct_and_compressed_transfer_syntaxes_are_stored(
    service: PacsService, store: Store, study_files: list[Path], tmp_path: Path
) -> None:
    # Enhanced CT Image Storage (one multi-frame instance) and an RLE Lossless CT slice, each by C-STORE.
    import sys

    from pydicom.uid import RLELossless

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "imaging"))
    from imaging_dicom_factory import write_enhanced_ct

    enhanced = write_enhanced_ct(tmp_path / "enhanced.dcm")
    rle = pydicom.dcmread(study_files[0])
    rle.compress(RLELossless)
    rle.SOPInstanceUID = rle.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    rle_path = tmp_path / "rle.dcm"
    rle.save_as(rle_path)
    port = service.scp.port
    assert scu_store(port, [enhanced]) == [0]
    assert scu_store(port, [rle_path]) == [0]
    with store.factory() as s:
        paths = [Path(i.storage_path) for i in s.scalars(select(Instance)).all()]
    stored = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, paths)}
    assert set(stored) == {pydicom.dcmread(enhanced).SOPInstanceUID, rle.SOPInstanceUID}
    got = stored[rle.SOPInstanceUID]
    assert got.file_meta.TransferSyntaxUID == RLELossless and (got.pixel_array == rle.pixel_array).all()
    assert int(stored[pydicom.dcmread(enhanced).SOPInstanceUID].NumberOfFrames) == 12


def test_listener_starts_when_its_warm_up_fails(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    from mmclinic.pacs.receive import Receiver

    def broken(self: Receiver) -> None:
        raise RuntimeError("database not reachable yet")

    monkeypatch.setattr(Receiver, "warm_up", broken)
    svc = PacsService(make_settings(store.data_dir), store.factory)
    svc.start()
    try:
        assert scu_echo(svc.scp.port) == 0
    finally:
        svc.stop()


def test_association_limit_and_pdu_size_come_from_the_settings(
    store: Store, study_files: list[Path], tmp_path: Path
) -> None:
    svc = PacsService(make_settings(store.data_dir, max_associations=1, max_pdu_size=16384), store.factory)
    svc.start()
    try:
        ae = AE(ae_title=SCU_AE)
        ae.add_requested_context("1.2.840.10008.1.1")
        first = ae.associate("127.0.0.1", svc.scp.port, ae_title="MMCLINIC")
        assert first.is_established
        assert first.acceptor.maximum_length == 16384  # what the listener told the peer it accepts
        second = ae.associate("127.0.0.1", svc.scp.port, ae_title="MMCLINIC")
        assert not second.is_established  # the one allowed association is taken
        first.release()
        # A 128 KiB slice arrives in 16 KiB PDUs and is stored byte for byte.
        big = pydicom.dcmread(study_files[0])
        tiled = np.tile(big.pixel_array, (256 // big.Rows, 256 // big.Columns))
        big.Rows, big.Columns, big.PixelData = 256, 256, tiled.astype(big.pixel_array.dtype).tobytes()
        big.SOPInstanceUID = big.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = tmp_path / "big.dcm"
        big.save_as(path)
        deadline = time.monotonic() + 5
        while True:  # the slot is free again once the first association's thread has ended
            try:
                statuses = scu_store(svc.scp.port, [path])
                break
            except ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        assert statuses == [0]
        with store.factory() as s:
            [inst] = s.scalars(select(Instance).where(Instance.sop_uid == big.SOPInstanceUID)).all()
        assert (pydicom.dcmread(inst.storage_path).pixel_array == tiled).all()
    finally:
        svc.stop()


def test_access_gate_sites_per_host_and_ipv4_mapped_peers() -> None:
    from mmclinic.errors import ConfigError
    from mmclinic.pacs.listener import AccessGate

    gate = AccessGate(
        "MMCLINIC",
        [
            PacsPeer(ae_title="PACS", host="127.0.0.1", site="north"),
            PacsPeer(ae_title="PACS", host="127.0.0.2", site="south"),
        ],
    )
    assert gate.check("PACS", "MMCLINIC", "127.0.0.1") == ("north", "ok")
    assert gate.check("PACS ", "MMCLINIC", "127.0.0.2") == ("south", "ok")  # each host keeps its own site
    assert gate.check("PACS", "MMCLINIC", "::ffff:127.0.0.2") == ("south", "ok")  # a dual-stack socket's view
    assert gate.check("PACS", "MMCLINIC", "127.0.0.3") == (None, "pacs.peer_host_mismatch")
    assert gate.check("OTHER", "MMCLINIC", "127.0.0.1") == (None, "pacs.calling_ae_unknown")
    assert gate.check("PACS", "SOMEONE", "127.0.0.1") == (None, "pacs.called_ae_unknown")
    with pytest.raises(ConfigError) as exc:
        AccessGate("MMCLINIC", [PacsPeer(ae_title="PACS", site="north"), PacsPeer(ae_title="PACS", site="south")])
    assert exc.value.reason == "config.pacs_peer_ambiguous"
