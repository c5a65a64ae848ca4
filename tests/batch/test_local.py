"""The local engine and the run around it, on the fake engine: outputs, failures, resume, overlap, bounds."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fake import FakeEngine, write_manifest

from mmclinic.batch import ScoreOptions, score_cohort
from mmclinic.batch.journal import Journal, journal_path
from mmclinic.case import Case, Prediction
from mmclinic.errors import ConfigError, InputError

XS = ["10", "20", "bad", "30", "crash", "40", "50"]


def _opts(manifest: Path, out: Path, **kw: Any) -> ScoreOptions:
    base: dict[str, Any] = {"batch_size": 2, "workers": 2, "progress": False, "n_boot": 50}
    return ScoreOptions(manifest=manifest, out=out, **(base | kw))


def _read(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_scores_cohort_and_reports_failures_by_reason(tmp_path: Path, suffix: str) -> None:
    manifest = write_manifest(tmp_path / "m", XS, extra_rows=[{"case_id": "", "patient_id": "p9"}])
    out = tmp_path / f"results{suffix}"
    eng = FakeEngine()
    s = score_cohort(_opts(manifest, out), engine_factory=lambda: eng)
    assert (s.total, s.scored, s.skipped) == (8, 5, 0)
    assert s.failed == {"tabular.fake_bad": 1, "batch.prepare_error": 1, "manifest.bad_row": 1}
    assert s.retryable == 1
    df = _read(out)
    assert list(df["case_id"]) == ["c00", "c01", "c03", "c05", "c06"]  # manifest order
    assert list(df["row"]) == [1, 2, 4, 6, 7]
    # Risk = x/100 + batch size * 1e-9: c06 is alone in the last batch (batches cut on manifest position).
    assert df["malignancy_risk"].tolist() == [0.1 + 2e-9, 0.2 + 2e-9, 0.3 + 1e-9, 0.4 + 1e-9, 0.5 + 1e-9]
    assert eng.batches == [["c00", "c01"], ["c03"], ["c05"], ["c06"]]
    for col in ("tumor_probability", "findings", "modalities_used", "weights_sha256", "input_fingerprint", "device"):
        assert col in df.columns
    assert json.loads(df["input_fingerprints"][0]) == {"tabular:row": eng.prepare(_case("10"))["fp"]}
    assert set(df["malignant"]) <= {0.0, 1.0}
    fails = _read(s.failures_output)  # type: ignore[arg-type]
    assert sorted(zip(fails["case_id"], fails["reason"], strict=True)) == [
        ("c02", "tabular.fake_bad"),
        ("c04", "batch.prepare_error"),
        ("row-8", "manifest.bad_row"),
    ]
    assert [p.name for p in s.report_paths] == ["results.metrics.json", "results.metrics.md"]
    report = json.loads(s.report_paths[0].read_text())
    assert report["n_cases"] == 5 and report["rejected_reasons"]["tabular.fake_bad"] == 1
    assert 0.0 <= report["fused"]["auroc"] <= 1.0 and "tumor_auroc" in report["fused"]
    assert "| fused |" in s.report_paths[1].read_text()


def _case(x: str) -> Case:
    return Case("c00", "p00", site="site-1", inputs={"tabular": {"x": x}})


def test_rerun_skips_done_cases_and_retries_only_retryable_failures(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m", XS)
    out = tmp_path / "r.parquet"
    score_cohort(_opts(manifest, out), engine_factory=FakeEngine)
    first = _read(out)
    eng = FakeEngine()
    s = score_cohort(_opts(manifest, out), engine_factory=lambda: eng)
    assert (s.scored, s.skipped) == (0, 5) and s.failed == {"tabular.fake_bad": 1, "batch.prepare_error": 1}
    assert eng.prepared == []  # nothing done is loaded again
    pd.testing.assert_frame_equal(first, _read(out))
    # The input of the crashed case changes: new fingerprint, scored now; the final failure is not retried.
    write_manifest(tmp_path / "m", [*XS[:4], "45", *XS[5:]])
    s = score_cohort(_opts(manifest, out), engine_factory=FakeEngine)
    assert (s.scored, s.skipped, s.failed) == (1, 5, {"tabular.fake_bad": 1})
    assert "c04" in set(_read(out)["case_id"])


class _Interrupt(BaseException):
    """Stands for the process dying mid-run (nothing catches it)."""


class _DyingEngine(FakeEngine):
    def __init__(self, die_at_batch: int) -> None:
        super().__init__()
        self.die_at_batch = die_at_batch

    def predict_prepared(self, items: list[dict[str, Any]]) -> list[Prediction]:
        if len(self.batches) == self.die_at_batch:
            raise _Interrupt
        return super().predict_prepared(items)


def test_interrupted_run_resumes_to_the_same_table(tmp_path: Path) -> None:
    xs = [str(10 * i) for i in range(1, 10)]
    manifest = write_manifest(tmp_path / "m", xs)
    full = tmp_path / "full.csv"
    score_cohort(_opts(manifest, full, batch_size=4), engine_factory=FakeEngine)
    out = tmp_path / "resumed.csv"
    with pytest.raises(_Interrupt):
        score_cohort(_opts(manifest, out, batch_size=4), engine_factory=lambda: _DyingEngine(1))
    assert not out.exists()  # no half table: the table is written only at the end
    with Journal(journal_path(out)) as j:
        assert j.count_results() == 4  # exactly the first committed batch
    eng = FakeEngine()
    s = score_cohort(_opts(manifest, out, batch_size=4), engine_factory=lambda: eng)
    assert (s.scored, s.skipped) == (5, 4)
    assert eng.batches == [["c04", "c05", "c06", "c07"], ["c08"]]  # the full run's batches, not a new cut
    a, b = _read(full), _read(out)
    cols = ["case_id", "malignancy_risk", "tumor_probability", "findings", "input_fingerprint"]
    pd.testing.assert_frame_equal(a[cols], b[cols], check_exact=True)
    with Journal(journal_path(out)) as j:
        assert j.count_results() == 9


class _OverlapEngine(FakeEngine):
    """The first predict returns only once a case of the next batch was prepared meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.next_prepared = threading.Event()
        self.overlapped = False

    def prepare(self, case: Case) -> dict[str, Any]:
        out = super().prepare(case)
        if case.case_id == "c02":
            self.next_prepared.set()
        return out

    def predict_prepared(self, items: list[dict[str, Any]]) -> list[Prediction]:
        if not self.batches:
            self.overlapped = self.next_prepared.wait(timeout=20)
        return super().predict_prepared(items)


def test_loading_runs_while_the_model_predicts(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m", [str(i) for i in range(6)])
    eng = _OverlapEngine()
    score_cohort(_opts(manifest, tmp_path / "r.csv"), engine_factory=lambda: eng)
    assert eng.overlapped


def test_prefetch_is_bounded(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m", [str(i % 90) for i in range(40)])
    eng = FakeEngine(predict_s=0.02)
    score_cohort(_opts(manifest, tmp_path / "r.csv", batch_size=2, workers=2), engine_factory=lambda: eng)
    # Window of 2 batches + 1 per worker ahead, plus the batch being predicted.
    assert 2 < eng.max_in_flight <= 2 * 2 + 2 + 2
    assert len(eng.prepared) == 40


def test_unlabelled_cohort_writes_no_metrics(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m", ["10", "20", "30"], labels=False)
    s = score_cohort(_opts(manifest, tmp_path / "r.csv"), engine_factory=FakeEngine)
    assert s.report_paths == () and s.scored == 3
    with (tmp_path / "r.csv").open() as fh:
        header = next(csv.reader(fh))
    assert "malignant" not in header


def test_bad_options_are_refused_before_any_work(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m", ["10"])
    with pytest.raises(InputError) as exc:
        score_cohort(_opts(manifest, tmp_path / "r.txt"), engine_factory=FakeEngine)
    assert exc.value.reason == "batch.bad_output"
    with pytest.raises(ConfigError):
        score_cohort(_opts(manifest, tmp_path / "r.csv", batch_size=0), engine_factory=FakeEngine)
    with pytest.raises(InputError) as exc:
        score_cohort(_opts(tmp_path / "absent.csv", tmp_path / "r.csv"), engine_factory=FakeEngine)
    assert exc.value.reason == "manifest.not_found"


def test_cli_reports_bad_input_in_one_line(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m", ["10"])
    proc = subprocess.run(
        [sys.executable, "-c", "from mmclinic.cli import main; main()", "score", str(manifest), "--out", "x.txt"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: batch.bad_output:")
    assert "Traceback" not in proc.stderr


def test_logs_carry_no_patient_or_case_identifiers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    manifest = write_manifest(tmp_path / "m", XS)
    with caplog.at_level(logging.DEBUG):
        score_cohort(_opts(manifest, tmp_path / "r.csv"), engine_factory=FakeEngine)
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "batch.case_failed" in text and "reason=tabular.fake_bad" in text  # failures are logged ...
    assert not any(f"p{i:02d}" in text or f"c{i:02d}" in text for i in range(len(XS)))  # ... without ids
