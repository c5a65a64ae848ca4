"""C-STORE receive logic: hashed durable paths, duplicates, conflicts, malformed input, resource limits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from _support import enter_test_database
from sqlalchemy import func, select

from mmclinic.pacs.receive import Receiver
from mmclinic.pacs.testing import Store, make_settings, open_store
from mmclinic.store.models import AuditEvent, Instance


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """The receiver's SQL runs as Core statements on the connection: every test here runs on both backends."""
    ctx, url = enter_test_database(str(request.param), tmp_path)
    try:
        st = open_store(tmp_path, url)
        yield st
        st.engine.dispose()
    finally:
        ctx.__exit__(None, None, None)


def _receiver(store: Store, **pacs: object) -> Receiver:
    return Receiver(store.factory, store.data_dir, make_settings(store.data_dir, **pacs).pacs)


def _count(store: Store) -> int:
    with store.factory() as s:
        return int(s.scalar(select(func.count()).select_from(Instance)) or 0)


def test_new_instance_is_written_under_hashed_path_and_recorded(store: Store, study_files: list[Path]) -> None:
    touched: list[str] = []
    r = _receiver(store)
    r.on_stored = touched.append
    data = study_files[0].read_bytes()
    res = r.store(data, "s1", "TESTSCU@127.0.0.1")
    assert (res.status, res.reason, res.created) == (0, "ok", True)
    ds = pydicom.dcmread(study_files[0], stop_before_pixels=True)
    with store.factory() as s:
        inst = s.scalars(select(Instance)).one()
    path = Path(inst.storage_path)
    assert path.read_bytes() == data
    assert ds.SOPInstanceUID not in str(path) and ds.StudyInstanceUID not in str(path)
    assert touched == [ds.StudyInstanceUID]
    assert not list(path.parent.glob(".tmp-*"))  # no torn temporary file left


def test_same_bytes_again_is_success_without_new_row(store: Store, study_files: list[Path]) -> None:
    r = _receiver(store)
    data = study_files[0].read_bytes()
    assert r.store(data, "s1", "c").status == 0
    again = r.store(data, "s1", "c")
    assert (again.status, again.created) == (0, False)
    assert _count(store) == 1


def test_changed_bytes_keep_first_and_fail_with_audit(store: Store, study_files: list[Path]) -> None:
    r = _receiver(store)
    first = study_files[0].read_bytes()
    assert r.store(first, "s1", "c").status == 0
    ds = pydicom.dcmread(study_files[0])
    ds.SeriesDescription = "CHANGED"
    changed_path = store.data_dir / "changed.dcm"
    ds.save_as(changed_path, enforce_file_format=True)
    res = r.store(changed_path.read_bytes(), "s1", "TESTSCU@127.0.0.1")
    assert (res.status, res.reason) == (0xC001, "pacs.instance_conflict")
    with store.factory() as s:
        inst = s.scalars(select(Instance)).one()
        events = s.scalars(select(AuditEvent).where(AuditEvent.action == "pacs.instance_conflict")).all()
    assert Path(inst.storage_path).read_bytes() == first
    assert len(events) == 1 and events[0].client == "TESTSCU@127.0.0.1"


def test_malformed_inputs_get_failure_statuses(store: Store, study_files: list[Path]) -> None:
    r = _receiver(store)
    assert r.store(b"", "s1", "c").status == 0xC000
    assert r.store(b"\x00" * 200, "s1", "c").reason == "dicom.unreadable"
    assert r.store(study_files[0].read_bytes()[:300], "s1", "c").status in (0xC000, 0xA900)
    ds = pydicom.dcmread(study_files[1])
    del ds.StudyInstanceUID
    p = store.data_dir / "nostudy.dcm"
    ds.save_as(p, enforce_file_format=True)
    res = r.store(p.read_bytes(), "s1", "c")
    assert (res.status, res.reason) == (0xA900, "dicom.missing_uid")
    ok = study_files[2].read_bytes()
    assert r.store(ok, "s1", "c", context_sop_class="1.2.840.10008.5.1.4.1.1.4").reason == "pacs.sop_class_mismatch"
    assert r.store(ok, "s1", "c", request_sop_uid="1.2.3").reason == "pacs.sop_instance_mismatch"
    assert _count(store) == 0
    assert r.store(ok, "s1", "c").status == 0  # still serving


def test_resource_limits_answer_out_of_resources(store: Store, study_files: list[Path]) -> None:
    disk = _receiver(store, min_free_disk_mb=1 << 40)
    res = disk.store(study_files[0].read_bytes(), "s1", "c")
    assert (res.status, res.reason) == (0xA700, "resource.disk_full")
    queue = _receiver(store, max_queued_jobs=0)
    res = queue.store(study_files[0].read_bytes(), "s1", "c")
    assert (res.status, res.reason) == (0xA700, "resource.queue_full")
    assert _count(store) == 0


def test_file_and_folders_are_fsynced_before_success(
    store: Store, study_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from mmclinic.store import dicomstore

    synced_dirs: list[Path] = []
    synced_fds: list[int] = []
    real_fsync_path, real_fsync = dicomstore.fsync_path, os.fsync

    def fsync_path(p: Path) -> None:
        synced_dirs.append(Path(p))
        real_fsync_path(p)

    def fsync(fd: int) -> None:
        synced_fds.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(dicomstore, "fsync_path", fsync_path)
    monkeypatch.setattr(dicomstore.os, "fsync", fsync)
    r = _receiver(store)
    assert r.store(study_files[0].read_bytes(), "s1", "c").status == 0
    with store.factory() as s:
        path = Path(s.scalars(select(Instance)).one().storage_path)
    assert synced_fds  # the file itself
    # its folder, and the parent of every folder created for it (series, study, prefix, dicom/)
    for folder in (path.parent, path.parent.parent, path.parent.parent.parent, store.data_dir / "dicom"):
        assert folder in synced_dirs
    assert not list((store.data_dir / "dicom" / ".incoming").glob(".tmp-*"))  # staged copy moved, none left
    synced_dirs.clear()
    assert r.store(study_files[0].read_bytes(), "s1", "c").status == 0  # repeat: nothing written or synced
    assert synced_dirs == [] and not list((store.data_dir / "dicom" / ".incoming").glob(".tmp-*"))


def test_warm_up_leaves_nothing_behind_and_storing_still_works(store: Store, study_files: list[Path]) -> None:
    from mmclinic.store.models import Series, Study

    r = _receiver(store)
    r.warm_up()
    r.warm_up()  # twice: a rehearsal must not collide with the last one
    with store.factory() as s:
        counts = [s.scalar(select(func.count()).select_from(m)) for m in (Study, Series, Instance)]
    assert counts == [0, 0, 0]
    assert not (store.data_dir / "dicom").exists() or not any((store.data_dir / "dicom").rglob("*.dcm"))
    res = r.store(study_files[0].read_bytes(), "s1", "TESTSCU@127.0.0.1")
    assert (res.status, res.created) == (0, True) and _count(store) == 1
