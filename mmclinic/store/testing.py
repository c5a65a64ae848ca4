"""Test support shared by store, API and other suites: isolated databases and a deterministic engine.

Not used in production code paths. ``FakeEngine`` implements the worker's ``Engine`` protocol
without torch so that queue and API tests exercise queue semantics, not model numerics.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from mmclinic.case import NOTES, TABULAR, Case, Finding, Prediction, Provenance, sha256_bytes, stable_hash
from mmclinic.errors import InputError

PG_ENV = "MMCLINIC_TEST_DATABASE_URL"
BACKENDS = ("sqlite", "postgresql")


def require_all() -> bool:
    """True when every optional external (PostgreSQL, tools) must be present (CI)."""
    return os.environ.get("MMCLINIC_REQUIRE_ALL") == "1"


@contextmanager
def isolated_database(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database URL nobody else uses: a new SQLite file, or a fresh PostgreSQL schema dropped afterwards.

    Raises ``LookupError`` when PostgreSQL is requested but ``MMCLINIC_TEST_DATABASE_URL`` is unset.
    """
    if backend == "sqlite":
        yield f"sqlite:///{(tmp_path / f'test-{uuid.uuid4().hex[:8]}.db').as_posix()}"
        return
    base = os.environ.get(PG_ENV, "")
    if not base:
        raise LookupError(f"{PG_ENV} is not set")
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = make_url(base)
        # search_path travels inside the URL, so subprocesses (workers, servers) land in the same schema.
        sep = "&" if url.query else "?"
        yield f"{base}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


class FakeEngine:
    """Deterministic stand-in for ``InferenceEngine``: risk derived from the inputs' hash.

    A note whose text starts with ``BAD`` raises ``InputError("notes.fake_bad")``; ``CRASH`` raises
    ``RuntimeError`` (an engine fault, retried). ``sleep_s`` (or ``MMCLINIC_FAKE_ENGINE_SLEEP``)
    makes ``predict_prepared`` slow, for lease tests.
    """

    def __init__(self, weights_sha256: str = "f" * 64, sleep_s: float | None = None) -> None:
        self._weights = weights_sha256
        env_sleep = os.environ.get("MMCLINIC_FAKE_ENGINE_SLEEP")
        self.sleep_s = sleep_s if sleep_s is not None else float(env_sleep or 0.0)
        self.predicted = 0

    @property
    def weights_sha256(self) -> str:
        return self._weights

    def prepare(self, case: Case) -> Any:
        for note in case.inputs.get(NOTES, []):
            if note.data.startswith(b"BAD"):
                raise InputError("notes.fake_bad", "the fake engine rejects notes starting with BAD")
            if note.data.startswith(b"CRASH"):
                raise RuntimeError("fake engine crash")
        return case

    def predict_prepared(self, items: list[Any]) -> list[Prediction]:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        out = []
        for case in items:
            assert isinstance(case, Case)
            fp = stable_hash({"case": case.case_id, "tab": case.inputs.get(TABULAR)})
            risk = int(fp[:8], 16) / 0xFFFFFFFF
            present = tuple(sorted(case.inputs))
            out.append(
                Prediction(
                    case_id=case.case_id,
                    task="tumor-risk",
                    tumor_probability=round(min(1.0, risk + 0.1), 6),
                    malignancy_risk=round(risk, 6),
                    findings=(Finding((1.0, 2.0, 3.0), 8.5, 0.9, risk, (4, 5, 6)),),
                    modality_contributions={m: 1.0 / len(present) for m in present},
                    provenance=Provenance(
                        weights_sha256=self._weights,
                        task="tumor-risk",
                        task_version="0.0-fake",
                        plugin_versions={"fake": "0"},
                        mmclinic_version="0.1.0",
                        preprocessing_hash=sha256_bytes(b"fake-preprocessing"),
                        input_fingerprints={m: sha256_bytes(m.encode()) for m in present},
                        device="cpu",
                        timings_ms={"predict": 1.0},
                        modalities_present=present,
                    ),
                )
            )
        self.predicted += len(out)
        return out


def fake_engine_factory() -> FakeEngine:
    """Entry for ``mmclinic worker --engine-factory mmclinic.store.testing:fake_engine_factory``."""
    return FakeEngine()


def make_ct_dicom(study_uid: str, series_uid: str, sop_uid: str, instance: int = 1, size: int = 8) -> bytes:
    """A small but real CT Image Storage Part 10 file written by pydicom (synthetic, no real patient)."""
    import io

    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = generate_uid(prefix="1.2.826.0.1.3680043.8.498.")
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, UID(sop_uid)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.Modality, ds.PatientName, ds.PatientID = "CT", "Synthetic^Test", "SYN0001"
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [0.0, 0.0, float(instance)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 1.0
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope = -1024.0, 1.0
    ds.PixelData = (np.arange(size * size, dtype=np.int16) + instance).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
