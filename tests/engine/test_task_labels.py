"""A task's own labels drive the manifest columns read, the batch table's label columns and the metrics."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_engine import make_checkpoint
from toy_plugins import TOY_SPEC, toy_registry

import mmclinic.registry
from mmclinic.batch import ScoreOptions, score_cohort
from mmclinic.plugin_api import HeadSpec
from mmclinic.training.evaluate import evaluate
from mmclinic.training.metrics import auroc

# A task whose labels are not tumor-risk's: "relapse" is what its risk head predicts.
RELAPSE = replace(
    TOY_SPEC,
    labels=("residual", "relapse"),
    heads=(
        HeadSpec("residual", label="residual", role="presence"),
        HeadSpec("relapse", label="relapse", role="risk"),
    ),
)
N = 24


def _manifest(folder: Path) -> tuple[Path, dict[str, float]]:
    """Tabular-only cases; a ``malignant`` column this task does not declare carries the opposite of relapse."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)
    relapse = {f"c{i}": float(i % 3 == 0) for i in range(N)}
    with (folder / "manifest.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "patient_id", "relapse", "residual", "malignant"])
        for cid, y in relapse.items():
            w.writerow([cid, f"p{cid}", int(y), int(y or rng.random() < 0.3), int(not y)])
    with (folder / "records.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["case_id", "a", "b"])
        for cid, y in relapse.items():
            w.writerow([cid, round(float(rng.normal(y, 1.0)), 4), round(float(rng.normal()), 4)])
    return folder / "manifest.csv", relapse


@pytest.fixture()
def relapse_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    reg = toy_registry(spec=RELAPSE)
    monkeypatch.setattr(mmclinic.registry, "_default", reg)  # the batch scorer resolves the process registry
    return make_checkpoint(tmp_path / "relapse.pt", reg, modalities=("tabular",))


def test_batch_table_and_report_follow_the_tasks_labels(tmp_path: Path, relapse_model: Path) -> None:
    manifest, relapse = _manifest(tmp_path / "cohort")
    out = tmp_path / "results.csv"
    opts = ScoreOptions(manifest=manifest, out=out, model=str(relapse_model), device="cpu", progress=False, n_boot=20)
    summary = score_cohort(opts)
    assert summary.scored == N and not summary.failed
    table = pd.read_csv(out)
    assert list(table.columns[-2:]) == ["residual", "relapse"]  # in the task's order, after the fixed columns
    assert "malignant" not in table.columns and "tumor_present" not in table.columns
    assert dict(zip(table.case_id, table.relapse, strict=True)) == relapse
    report = json.loads(summary.report_paths[0].read_text())
    expect = auroc(table.malignancy_risk.to_numpy(), table.relapse.to_numpy())
    assert report["fused"]["auroc"] == pytest.approx(expect)
    # Scored against the undeclared column the same risks would give 1 - AUROC: it was not read.
    assert abs(expect - 0.5) > 1e-6
    assert report["fused"]["tumor_auroc"] == pytest.approx(
        auroc(table.tumor_probability.to_numpy(), table.residual.to_numpy())
    )


def test_evaluate_scores_the_risk_heads_label(tmp_path: Path, relapse_model: Path) -> None:
    manifest, _ = _manifest(tmp_path / "cohort")
    report = evaluate(
        manifest,
        relapse_model,
        tmp_path / "eval",
        device="cpu",
        n_boot=20,
        registry=toy_registry(spec=RELAPSE),
        progress=False,
    )
    assert report["n_cases"] == N and report["task"] == "toy-task"
    # The batch scorer's risks for the same cases give the same AUROC against relapse.
    out = tmp_path / "r.csv"
    score_cohort(
        ScoreOptions(manifest=manifest, out=out, model=str(relapse_model), device="cpu", progress=False, n_boot=20)
    )
    table = pd.read_csv(out)
    assert report["fused"]["auroc"] == pytest.approx(auroc(table.malignancy_risk.to_numpy(), table.relapse.to_numpy()))
