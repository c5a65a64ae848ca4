"""``mmclinic synth`` on the command line: writes a cohort, prints AUROCs; bad options exit 2 with a reason."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mmclinic.cli import app, main


def test_synth_command_writes_cohort_and_prints_aurocs(tmp_path: Path) -> None:
    out = tmp_path / "c"
    result = CliRunner().invoke(app, ["synth", "--cases", "3", "--seed", "2", "--out", str(out), "--slices", "16"])
    assert result.exit_code == 0, result.output
    assert "bayes-optimal AUROC" in result.output and "oracle AUROC" in result.output
    assert (out / "manifest.csv").read_text().count("\n") == 4
    assert len(list((out / "cases").rglob("*.dcm"))) == 3 * 16
    assert json.loads((out / "ground_truth.json").read_text())["settings"]["slices"] == 16


def test_metadata_only_writes_ground_truth_only(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["synth", "--cases", "300", "--metadata-only", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert [p.name for p in tmp_path.iterdir()] == ["ground_truth.json"]
    doc = json.loads((tmp_path / "ground_truth.json").read_text())
    assert doc["metadata_only"] is True and len(doc["cases"]) == 300


@pytest.mark.parametrize(
    "args",
    [["--cases", "0"], ["--rows", "8"], ["--pixel-spacing", "0"], ["--workers", "0"]],
)
def test_bad_options_exit_2_with_reason(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["mmclinic", "synth", "--out", str(tmp_path / "x"), *args])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error: synth.bad_settings" in err and "Traceback" not in err
