"""End to end on the real engine: a generated cohort, a damaged study, SIGKILL + resume, the store."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from batch_compare import COMPARE

from mmclinic.batch import ScoreOptions, ScoreSummary, score_cohort
from mmclinic.batch.journal import Journal, journal_path
from mmclinic.case import sha256_file

pytestmark = pytest.mark.slow


def test_real_cohort_is_scored_and_the_damaged_study_fails_with_its_reason(
    reference: tuple[Path, ScoreSummary], checkpoint: Path
) -> None:
    out, s = reference
    assert (s.total, s.scored, s.skipped) == (6, 5, 0)
    (reason,) = s.failed
    assert reason == "dicom.no_image_series" and s.retryable == 0  # the imaging plugin's own code
    df = pd.read_parquet(out)
    assert list(df["case_id"]) == ["C0001", "C0002", "C0004", "C0005", "C0006"]
    assert df["malignancy_risk"].between(0, 1).all() and df["tumor_probability"].between(0, 1).all()
    assert set(df["weights_sha256"]) == {sha256_file(checkpoint)}
    assert all("imaging" in m.split(";") for m in df["modalities_used"])
    fps = json.loads(df["input_fingerprints"][0])
    assert any(k.startswith("imaging:") for k in fps) and any(k.startswith("notes:") for k in fps)
    fails = pd.read_parquet(s.failures_output)  # type: ignore[arg-type]
    assert list(fails["case_id"]) == ["C0003"] and list(fails["reason"]) == [reason]
    report = json.loads(out.with_name("ref.metrics.json").read_text())
    assert report["n_cases"] == 5 and "detection" in report
    assert {"bayes_optimal", "true_probability"} <= set(report["reference"])


def _journal_results(path: Path) -> int:
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return int(db.execute("SELECT COUNT(*) FROM results").fetchone()[0])
    except sqlite3.Error:  # not created yet
        return 0


def test_sigkill_halfway_then_rerun_scores_every_case_exactly_once(
    damaged: Path, checkpoint: Path, reference: tuple[Path, ScoreSummary], tmp_path: Path
) -> None:
    out = tmp_path / "killed.parquet"
    cmd = [
        sys.executable,
        "-c",
        "from mmclinic.cli import main; main()",
        "score",
        str(damaged),
        "--out",
        str(out),
        "--model",
        str(checkpoint),
        "--device",
        "cpu",
        "--batch-size",
        "2",
        "--workers",
        "2",
        "--no-progress",
    ]
    env = os.environ | {"MMCLINIC_LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)
    journal = journal_path(out)
    deadline = time.monotonic() + 300
    try:
        while proc.poll() is None and _journal_results(journal) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()!r}"  # type: ignore[union-attr]
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    committed = _journal_results(journal)
    assert 2 <= committed < 5, committed  # halfway: some batches committed, not all
    assert not out.exists()

    again = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=400)
    assert again.returncode == 0, again.stderr
    assert f"scored {5 - committed}, skipped (already done) {committed}, failed 1 of 6" in again.stdout
    with Journal(journal) as j:
        assert j.count_results() == 5  # every good case exactly once
    ref = pd.read_parquet(reference[0])
    pd.testing.assert_frame_equal(ref[COMPARE], pd.read_parquet(out)[COMPARE], check_exact=True)


def test_store_receives_each_prediction_once(
    damaged: Path, real_engine: Any, reference: tuple[Path, ScoreSummary], tmp_path: Path
) -> None:
    from sqlalchemy import func, select

    from mmclinic.store.db import create_db_engine, session_factory
    from mmclinic.store.models import Job, PredictionRow

    url = f"sqlite:///{tmp_path / 'store.db'}"
    opts = ScoreOptions(
        manifest=damaged,
        out=tmp_path / "r.csv",
        batch_size=2,
        progress=False,
        n_boot=20,
        db_url=url,
        data_dir=tmp_path / "data",
    )
    first = score_cohort(opts, engine_factory=lambda: real_engine)
    assert first.store == {"created": 5, "existing": 0, "failed": {}}
    second = score_cohort(opts, engine_factory=lambda: real_engine)
    assert second.store == {"created": 0, "existing": 5, "failed": {}} and second.skipped == 5
    engine = create_db_engine(url)
    with session_factory(engine)() as s:
        assert s.scalar(select(func.count()).select_from(PredictionRow)) == 5
        assert set(s.scalars(select(Job.state))) == {"done"}
        risks = sorted(s.scalars(select(PredictionRow.malignancy_risk)))
    engine.dispose()
    assert risks == sorted(pd.read_parquet(reference[0])["malignancy_risk"])
    assert any((tmp_path / "data" / "dicom").rglob("*.dcm"))
