"""``mmclinic demo`` end to end on a small generated cohort: plugins, summary, scoring into SQLite, evaluation."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path


def _demo(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """``mmclinic demo`` in a subprocess on ``tmp_path`` (its own data folder and SQLite file)."""
    manifest = tmp_path / "cohort" / "manifest.csv"  # missing on the first run: the demo must generate it
    env = {**os.environ, "MMCLINIC_DATA_DIR": str(tmp_path / "var"), "MMCLINIC_LOG_LEVEL": "WARNING"}
    env.pop("MMCLINIC_DATABASE_URL", None)
    cmd = [sys.executable, "-c", "from mmclinic.cli import main; main()", "demo"]
    args = ["--manifest", str(manifest), "--out-dir", str(tmp_path / "demo")]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=600)


def test_demo_generates_scores_stores_and_evaluates(tmp_path: Path) -> None:
    out = _demo(tmp_path)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    text = out.stdout
    assert "tumor-risk" in text and "ct-dicom" in text  # plugin table
    assert "cases: 24" in text
    assert "scored 24, skipped (already done) 0, failed 0 of 24" in text
    assert text.count("imaging;notes;tabular") == 24  # one line per case, all modalities used
    assert "malignancy: AUROC" in text and "detection (lesions" in text
    assert re.search(r"mm at \([-\d]+,[-\d]+,[-\d]+\) conf \d\.\d\d risk \d\.\d\d", text)  # each finding's own risk
    db = sqlite3.connect(tmp_path / "var" / "mmclinic.db")
    assert db.execute("select count(*) from predictions").fetchone()[0] == 24

    again = _demo(tmp_path)
    assert again.returncode == 0
    assert "scored 0, skipped (already done) 24" in again.stdout  # resumable: nothing scored twice
    assert db.execute("select count(*) from predictions").fetchone()[0] == 24
