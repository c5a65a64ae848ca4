"""``mmclinic train`` / ``evaluate`` at the edge: bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from mmclinic.cli import main; sys.argv = ['mmclinic', *sys.argv[1:]]; main()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, check=False)


def test_commands_are_registered() -> None:
    out = _cli("--help").stdout
    assert "train" in out and "evaluate" in out


def test_missing_manifest_is_a_one_line_error(tmp_path: Path) -> None:
    r = _cli("train", "--manifest", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "run"), "--device", "cpu")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: manifest.not_found")
    assert "Traceback" not in r.stderr


def test_unknown_model_is_a_one_line_error(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("case_id,patient_id\n")
    r = _cli("evaluate", "--manifest", str(manifest), "--model", "no-such-model", "--out", str(tmp_path / "e"))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: model.not_found")
