"""Orthanc as the PACS: REST upload → Orthanc C-STOREs to mmclinic → SR back (Orthanc down, then up: once)."""

from __future__ import annotations

import io
import json
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select

from mmclinic.config import PacsPeer
from mmclinic.pacs.service import PacsService
from mmclinic.pacs.sr import read_sr_findings
from mmclinic.pacs.testing import Store, dest, free_port, make_settings
from mmclinic.store.models import PredictionRow
from mmclinic.store.testing import FakeEngine
from mmclinic.store.worker import run_worker

pytestmark = [pytest.mark.integration, pytest.mark.pacs]


class Orthanc:
    """An Orthanc process with its own storage, HTTP and DICOM ports, loopback only, no auth."""

    def __init__(self, binary: str, root: Path, mmclinic_port: int) -> None:
        self.binary, self.root = binary, root
        self.http, self.dicom = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http}"
        cfg = {
            "Name": "mmclinic-test",
            "StorageDirectory": str(root / "storage"),
            "IndexDirectory": str(root / "storage"),
            "HttpPort": self.http,
            "DicomPort": self.dicom,
            "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": {"mmclinic": ["MMCLINIC", "127.0.0.1", mmclinic_port]},
            "Plugins": [],
        }
        self.config = root / "orthanc.json"
        root.mkdir(parents=True, exist_ok=True)
        self.config.write_text(json.dumps(cfg))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Orthanc:
        log = (self.root / "orthanc.log").open("ab")
        self.proc = subprocess.Popen([self.binary, str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                self.get("/system")
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("Orthanc did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None

    def request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        req = urllib.request.Request(self.url + path, data=body, method=method)
        with urllib.request.urlopen(req, timeout=60) as r:
            return bytes(r.read())

    def get(self, path: str) -> Any:
        return json.loads(self.request("GET", path))

    def sr_instances(self) -> list[str]:
        out = []
        for series in self.get("/series"):
            info = self.get(f"/series/{series}")
            if info["MainDicomTags"].get("Modality") == "SR":
                out.extend(info["Instances"])
        return out


@pytest.fixture
def orthanc_bin(require_tool: Callable[[str], str]) -> str:
    return require_tool("Orthanc")


def test_orthanc_round_trip_and_outage(store: Store, study_files: list[Path], tmp_path: Path, orthanc_bin: str) -> None:
    listener_port = free_port()
    orthanc = Orthanc(orthanc_bin, tmp_path / "orthanc", listener_port)
    settings = make_settings(
        store.data_dir,
        port=listener_port,
        allowed_peers=[PacsPeer(ae_title="ORTHANC", host="127.0.0.1", site="s1")],
        destinations=[dest(orthanc.dicom, "ORTHANC")],
    )
    svc = PacsService(settings, store.factory)
    orthanc.start()
    svc.start()
    try:
        for f in study_files:
            orthanc.request("POST", "/instances", f.read_bytes())
        [study_id] = orthanc.get("/studies")
        orthanc.request("POST", "/modalities/mmclinic/store", json.dumps({"Resources": [study_id]}).encode())
        assert svc.tick(now=1e12).jobs_queued == 1
        orthanc.stop()  # the PACS goes down before the result is ready
        run_worker(store.factory, FakeEngine(), "w", poll_s=0.01, backoff_s=0.0, until_idle=True)
        stats = svc.tick()
        assert stats.exported == 1 and stats.outbox is not None and stats.outbox.failed == 1
        [name] = svc.outbox.pending()
        orthanc.start()  # back up, same storage
        assert orthanc.sr_instances() == []
        svc.tick()
        svc.outbox.flush(now=1e12)
        assert svc.outbox.pending() == [] and svc.outbox.sent() == [name]
        [sr_id] = orthanc.sr_instances()  # exactly one SR
        sr = pydicom.dcmread(io.BytesIO(orthanc.request("GET", f"/instances/{sr_id}/file")))
    finally:
        svc.stop()
        orthanc.stop()
    with store.factory() as s:
        pred = s.scalars(select(PredictionRow)).one()
    src = pydicom.dcmread(study_files[0], stop_before_pixels=True)
    assert sr.StudyInstanceUID == src.StudyInstanceUID and sr.Modality == "SR"
    parsed = read_sr_findings(sr)
    assert parsed["case"]["Probability of cancer"] == pytest.approx(round(pred.malignancy_risk, 4))
    assert len(parsed["findings"]) == len(pred.findings)
    for got, want in zip(parsed["findings"], pred.findings, strict=True):
        assert got["center_mm"] == pytest.approx(want["center_mm"])
        assert got["measurements"]["Diameter"] == pytest.approx(round(want["diameter_mm"], 1))
        assert got["frame_of_reference_uid"] == src.FrameOfReferenceUID
