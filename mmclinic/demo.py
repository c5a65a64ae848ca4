"""``mmclinic demo``: score the bundled sample cohort end to end on the embedded defaults and explain it."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mmclinic.cohort import read_ground_truth, read_manifest
from mmclinic.config import Settings
from mmclinic.errors import InputError


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo reads the cohort and writes its outputs."""

    manifest: Path
    out_dir: Path

    @property
    def results(self) -> Path:
        """The results table written by the batch scorer."""
        return self.out_dir / "results.parquet"


def ensure_cohort(manifest: Path, console: Console) -> Path:
    """The sample cohort, or a freshly generated one when the manifest is missing (same command as sample_data)."""
    if manifest.is_file():
        return manifest
    from mmclinic.synth import SynthSettings, generate_cohort

    out = manifest.parent
    console.print(f"sample cohort not found; generating 24 synthetic cases into {out}")
    generate_cohort(SynthSettings(cases=24, seed=2024), out)
    return manifest


def cohort_summary(manifest: Path) -> dict[str, Any]:
    """Counts a data scientist looks at first: cases, patients, sites, labels, notes, records."""
    rows = read_manifest(manifest)
    labels = [r.get("malignant") for r in rows if r.get("malignant") != ""]
    tumors = [r.get("tumor_present") for r in rows if r.get("tumor_present") != ""]
    summary: dict[str, Any] = {
        "cases": len(rows),
        "patients": len({r.get("patient_id") for r in rows}),
        "sites": dict(sorted(Counter(r.get("site") or "default" for r in rows).items())),
        "with_ct": sum(bool(r.get("dicom_dir")) for r in rows),
        "notes": sum(len([p for p in r.get("note_paths").split(";") if p]) for r in rows),
        "malignant": sum(v in ("1", "1.0", "true") for v in labels),
        "tumor_present": sum(v in ("1", "1.0", "true") for v in tumors),
    }
    gt_path = manifest.parent / "ground_truth.json"
    if gt_path.is_file():
        gt = read_ground_truth(gt_path)
        summary["bayes_auroc"] = gt.bayes_auroc
        summary["oracle_auroc"] = gt.oracle_auroc
        summary["lesions"] = sum(len(c.lesions) for c in gt.cases.values())
    return summary


def detection_vs_truth(results: list[dict[str, Any]], gt_path: Path) -> dict[str, Any] | None:
    """Lesion-level detection of the scored cases against the generator's ground truth."""
    if not gt_path.is_file():
        return None
    from mmclinic.training.metrics import GtLesion, detection_metrics

    gt = read_ground_truth(gt_path)
    findings, lesions = [], []
    for row in results:
        truth = gt.cases.get(str(row["case_id"]))
        if truth is None:
            continue
        fs = json.loads(row["findings"]) if isinstance(row["findings"], str) else row["findings"]
        findings.append([(tuple(f["center_mm"]), float(f["confidence"])) for f in fs])
        lesions.append([GtLesion(le.center_mm, le.diameter_mm) for le in truth.lesions])
    if not findings:
        return None
    return detection_metrics(findings, lesions)


def _fmt_findings(raw: Any) -> str:
    fs = json.loads(raw) if isinstance(raw, str) else raw
    if not fs:
        return "no finding"
    parts = []
    for f in fs[:2]:
        x, y, z = f["center_mm"]
        parts.append(
            f"{f['diameter_mm']:.0f} mm at ({x:.0f},{y:.0f},{z:.0f}) conf {f['confidence']:.2f} "
            f"risk {f['malignancy_risk']:.2f}"
        )
    more = f" +{len(fs) - 2}" if len(fs) > 2 else ""
    return "; ".join(parts) + more


def run_demo(settings: Settings, paths: DemoPaths, console: Console) -> int:
    """Plugins → cohort summary → batch scoring into the store → per-case lines → evaluation. Returns exit code."""
    import pandas as pd

    from mmclinic.batch import ScoreOptions, score_cohort
    from mmclinic.cli.plugins import plugins_table
    from mmclinic.registry import get_registry

    console.rule("1. installed plugins")
    reg = get_registry()
    console.print(plugins_table(reg))
    broken = [r for r in reg.records if r.status != "ok"]

    console.rule("2. cohort")
    manifest = ensure_cohort(paths.manifest, console)
    summary = cohort_summary(manifest)
    console.print(f"manifest: {manifest}")
    for key, value in summary.items():
        console.print(f"  {key}: {value}")

    console.rule("3. scoring (local engine, bundled tumor-risk weights)")
    db_url = settings.effective_database_url
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    paths.out_dir.mkdir(parents=True, exist_ok=True)
    result = score_cohort(
        ScoreOptions(
            manifest=manifest,
            out=paths.results,
            model=settings.model,
            device=settings.device,
            engine="local",
            workers=settings.batch.workers,
            batch_size=settings.batch.batch_size,
            db_url=db_url,
            progress=console.is_terminal,
            n_boot=500,
        )
    )
    for line in result.lines():
        console.print(line, markup=False)

    console.rule("4. per case")
    rows = [{str(k): v for k, v in r.items()} for r in pd.read_parquet(paths.results).to_dict("records")]
    table = Table()
    for col in ("case", "malignancy risk", "tumor prob.", "findings", "modalities"):
        table.add_column(col)
    for row in sorted(rows, key=lambda r: str(r["case_id"])):
        table.add_row(
            str(row["case_id"]),
            f"{row['malignancy_risk']:.3f}",
            f"{row['tumor_probability']:.3f}",
            _fmt_findings(row["findings"]),
            str(row["modalities_used"]),
        )
    console.print(table)

    console.rule("5. evaluation against the ground truth")
    for report in result.report_paths:
        if report.suffix == ".json":
            doc = json.loads(report.read_text())
            fused = doc.get("fused", {})
            ref = doc.get("reference", {}).get("bayes_optimal")
            if "auroc" in fused:
                lo, hi = fused.get("auroc_ci95", (float("nan"), float("nan")))
                console.print(
                    f"  malignancy: AUROC {fused['auroc']:.3f} [{lo:.3f}, {hi:.3f}] over {fused.get('n')} cases "
                    f"({fused.get('n_positive')} malignant), AUPRC {fused.get('auprc', float('nan')):.3f}, "
                    f"Brier {fused.get('brier', float('nan')):.3f}, ECE {fused.get('ece', float('nan')):.3f}"
                )
            if isinstance(ref, int | float):
                console.print(f"  the generator's Bayes-optimal AUROC on these cases: {float(ref):.3f}")
    det = detection_vs_truth(rows, manifest.parent / "ground_truth.json")
    if det is not None:
        console.print(
            f"  detection (lesions ≥ 6 mm): sensitivity {det['sensitivity']:.2f} at ≤ 1 FP/scan "
            f"over {det['n_lesions']} lesions in {det['n_scans']} scans; "
            f"median centre error {det['median_center_error_mm']:.1f} mm"
        )
    where = db_url.split("///")[-1] if db_url.startswith("sqlite") else "the configured database"
    console.print(f"\nresults table: {paths.results}\npredictions stored in: {where}")
    console.print("24 synthetic cases; with so few cases these metrics are very noisy (see the model card for ≥ 1000).")
    if broken:
        console.print(f"[yellow]{len(broken)} plugin(s) failed to load (see table above)[/yellow]")
    return 0 if not result.failed else 1


def check_manifest(manifest: Path) -> None:
    """Fail early with a clear reason when the demo cohort cannot be used."""
    if manifest.exists() and not manifest.is_file():
        raise InputError("demo.bad_manifest", f"{manifest} is not a file")
