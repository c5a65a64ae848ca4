"""Metrics of a scored, labelled cohort in the same report format as ``mmclinic evaluate`` (no model needed)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mmclinic.logs import event

log = logging.getLogger(__name__)


def cohort_report(
    *,
    manifest: Path,
    model: str,
    preds: Sequence[dict[str, Any]],
    labels: Mapping[str, Mapping[str, float]],
    risk_label: str,
    presence_label: str,
    rejected: Mapping[str, str],
    threshold: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
    voxel_mm: float = 5.0,
) -> dict[str, Any] | None:
    """The report dict, or ``None`` when fewer than two scored cases carry the risk head's label.

    ``risk_label`` / ``presence_label``: the labels the task's risk and presence heads are scored on.
    """
    from mmclinic.training.metrics import bayes_goal, ece_goal, evaluate_predictions

    labelled = [p for p in preds if risk_label in labels.get(p["case_id"], {})]
    if len(labelled) < 2:
        event(log, "batch.report_skipped", labelled=len(labelled))
        return None
    y = {p["case_id"]: float(labels[p["case_id"]][risk_label]) for p in labelled}
    tumor = None
    if all(presence_label in labels[p["case_id"]] for p in labelled):
        tumor = {p["case_id"]: float(labels[p["case_id"]][presence_label]) for p in labelled}
    fused = evaluate_predictions(labelled, y, threshold=threshold, tumor_labels=tumor, n_boot=n_boot, seed=seed)
    if tumor is not None:
        fused["tumor_auroc"] = fused["tumor"]["auroc"]
    first = labelled[0]
    modalities = sorted({m for p in labelled for m in p["provenance"]["modalities_present"]})
    report: dict[str, Any] = {
        "manifest": str(manifest),
        "model": model,
        "weights_sha256": first["provenance"]["weights_sha256"],
        "task": first["task"],
        "modalities": modalities,
        "n_cases": len(labelled),
        "n_rejected": len(rejected),
        "rejected_reasons": dict(Counter(rejected.values())),
        "n_boot": n_boot,
        "fused": fused,
        "ablation": {},
        "compare": {},
        "reference": {},
        "goals": {},
    }
    truth = manifest.parent / "ground_truth.json"
    if truth.is_file():
        _add_ground_truth(report, truth, labelled, [y[p["case_id"]] for p in labelled], voxel_mm)
    auc = fused["auroc"]
    report["goals"]["ece"] = ece_goal(fused)
    bayes = bayes_goal(auc, report["reference"])
    if bayes is not None:
        report["goals"]["auroc_vs_bayes"] = bayes
    return report


def _add_ground_truth(
    report: dict[str, Any], path: Path, preds: Sequence[dict[str, Any]], y: Sequence[float], voxel_mm: float
) -> None:
    """Bayes-optimal reference AUROC and lesion detection metrics from a synthetic cohort's ground truth."""

    from mmclinic.cohort import read_ground_truth
    from mmclinic.errors import InputError
    from mmclinic.training.metrics import GtLesion, bayes_references, detection_metrics

    try:
        gt = read_ground_truth(path)
    except InputError as exc:
        event(log, "batch.ground_truth_ignored", reason=exc.reason)
        return
    ids = [p["case_id"] for p in preds]
    if not all(c in gt.cases for c in ids):
        return
    truth = [gt.cases[c] for c in ids]
    report["reference"].update(bayes_references([t.p_observed for t in truth], [t.p_malignant for t in truth], y))
    with_ct = [p for p in preds if "imaging" in p["provenance"]["modalities_present"]]
    if with_ct:
        findings = [[(tuple(f["center_mm"]), float(f["confidence"])) for f in p["findings"]] for p in with_ct]
        lesions = [[GtLesion(le.center_mm, le.diameter_mm) for le in gt.cases[p["case_id"]].lesions] for p in with_ct]
        report["detection"] = detection_metrics(findings, lesions, voxel_mm=voxel_mm)
