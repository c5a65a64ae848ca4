"""A small deterministic engine (no torch) and hand-written manifests for the batch scorer's unit tests.

The real engine is used by the end-to-end tests; this one makes the scorer's own logic (batching,
journal, failures, overlap) testable in milliseconds. The record field ``x`` drives it:
``x`` = a number → risk x/100; ``bad`` → InputError at prepare; ``crash`` → RuntimeError at prepare;
``boom`` → InputError at predict (only when it is in the batch).
"""

from __future__ import annotations

import csv
import threading
import time
from pathlib import Path
from typing import Any

from mmclinic.case import TABULAR, Case, Prediction, Provenance, stable_hash
from mmclinic.errors import InputError


class FakeEngine:
    """Implements the scorer's engine protocol; records what ran when."""

    def __init__(self, weights: str = "f" * 64, predict_s: float = 0.0, prepare_s: float = 0.0) -> None:
        self._weights = weights
        self.predict_s, self.prepare_s = predict_s, prepare_s
        self.lock = threading.Lock()
        self.prepared: list[str] = []
        self.batches: list[list[str]] = []
        self.log: list[tuple[str, str, float]] = []  # (what, case or batch, time)
        self.in_flight = 0  # prepared, not yet predicted
        self.max_in_flight = 0

    @property
    def weights_sha256(self) -> str:
        return self._weights

    def prepare(self, case: Case) -> dict[str, Any]:
        rec = case.inputs.get(TABULAR) or {}
        x = str(rec.get("x", "0"))
        if x == "bad":
            raise InputError("tabular.fake_bad", "x is bad")
        if x == "crash":
            raise RuntimeError("plugin bug")
        time.sleep(self.prepare_s)
        with self.lock:
            self.prepared.append(case.case_id)
            self.log.append(("prepare", case.case_id, time.perf_counter()))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        return {"case_id": case.case_id, "x": x, "fp": stable_hash(rec)}

    def predict_prepared(self, items: list[dict[str, Any]]) -> list[Prediction]:
        ids = [it["case_id"] for it in items]
        with self.lock:
            self.batches.append(ids)
            self.log.append(("predict", ",".join(ids), time.perf_counter()))
        if any(it["x"] == "boom" for it in items):
            raise InputError("case.fake_boom", "boom")
        time.sleep(self.predict_s)
        with self.lock:
            self.in_flight -= len(items)
        # The risk depends on the batch size, like batched float kernels may: resume must keep batches.
        return [self._pred(it, len(items)) for it in items]

    def _pred(self, it: dict[str, Any], n: int) -> Prediction:
        risk = float(it["x"]) / 100.0 + n * 1e-9
        prov = Provenance(
            weights_sha256=self._weights,
            task="fake",
            task_version="0",
            plugin_versions={"fake": "0"},
            mmclinic_version="0",
            preprocessing_hash="0" * 64,
            input_fingerprints={"tabular:row": it["fp"]},
            device="cpu",
            timings_ms={"predict": 1.0},
            modalities_present=(TABULAR,),
        )
        return Prediction(it["case_id"], "fake", risk / 2, risk, (), {TABULAR: 0.0}, prov)


def write_manifest(
    folder: Path, xs: list[str], labels: bool = True, extra_rows: list[dict[str, str]] | None = None
) -> Path:
    """``manifest.csv`` + ``records.csv`` with one case per value of ``xs`` (case ids c00, c01, ...)."""
    folder.mkdir(parents=True, exist_ok=True)
    cols = ["case_id", "patient_id", "site"] + (["tumor_present", "malignant"] if labels else [])
    rows = []
    for i in range(len(xs)):
        row = {"case_id": f"c{i:02d}", "patient_id": f"p{i:02d}", "site": "site-1"}
        if labels:
            row |= {"tumor_present": str(i % 2), "malignant": str((i // 2) % 2)}
        rows.append(row)
    rows += extra_rows or []
    with (folder / "manifest.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    with (folder / "records.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "x"])
        for i, x in enumerate(xs):
            w.writerow([f"c{i:02d}", x])
    return folder / "manifest.csv"
