"""``mmclinic evaluate``: score a labelled cohort with a model (+ comparison models) and write a report."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mmclinic.case import IMAGING
from mmclinic.engine.engine import InferenceEngine
from mmclinic.engine.geometry import voxel_to_patient
from mmclinic.errors import InputError
from mmclinic.logs import event
from mmclinic.model.detection import find_lesion_regions, find_lesions, finding_risks
from mmclinic.registry import Registry, get_registry
from mmclinic.training.cache import CachedInput, CaseCache, batch_of, safe_get
from mmclinic.training.data import Cohort, case_scores, lesion_alone_risks, load_cohort
from mmclinic.training.metrics import (
    auroc,
    bayes_goal,
    bayes_references,
    detection_metrics,
    ece_goal,
    finding_risk_metrics,
    paired_bootstrap_delta,
    roc_points,
    summarize,
)
from mmclinic.training.progress import progress_bar

log = logging.getLogger(__name__)

F = np.ndarray[Any, np.dtype[np.float64]]


@dataclass
class Scored:
    """One model's scores on the evaluable cases (aligned with ``case_ids``)."""

    name: str
    modalities: tuple[str, ...]
    case_ids: list[str]
    risk: F
    tumor: F
    ablations: dict[str, F] = field(default_factory=dict)
    findings: list[list[tuple[tuple[float, float, float], float]]] = field(default_factory=list)
    # At the engine's operating point: (centre_mm, confidence, {"isolated": risk, "by_confidence": risk}).
    risked_findings: list[list[tuple[tuple[float, float, float], float, dict[str, float]]]] = field(
        default_factory=list
    )
    threshold: float = 0.5
    weights_sha256: str = ""


def score_model(
    engine: InferenceEngine,
    cohort: Cohort,
    cache: CaseCache,
    name: str,
    progress: bool = True,
    batch: int = 32,
    finding_risk: bool = False,
) -> tuple[Scored, dict[str, str]]:
    """Calibrated risk, tumor probability, per-modality ablations and findings for every case labelled for risk.

    ``finding_risk``: also each operating-point finding's risk, by isolation and by the confidence rule.
    """
    rejected: dict[str, str] = {}
    ok: list[tuple[str, dict[str, CachedInput]]] = []
    risk_label = engine.spec.head("risk").label
    with progress_bar(f"preparing ({name})", len(cohort.cases), enabled=progress) as advance:
        for case in cohort.cases:
            advance()
            if risk_label not in case.labels:
                rejected[case.case_id] = "labels.missing"
                continue
            got = safe_get(cache, case)
            if isinstance(got, dict):
                ok.append((case.case_id, got))
            else:
                rejected[case.case_id] = got.reason
    risk, tumor = [], []
    abl: dict[str, list[float]] = {m: [] for m in engine.modalities}
    findings: list[list[tuple[tuple[float, float, float], float]]] = []
    risked: list[list[tuple[tuple[float, float, float], float, dict[str, float]]]] = []
    steps = range(0, len(ok), batch)
    with progress_bar(f"scoring ({name})", len(steps), enabled=progress) as advance:
        for i in steps:
            chunk = ok[i : i + batch]
            b = batch_of([c for _, c in chunk], engine.modalities)
            res = engine.run(b, contributions=False, ablations=len(engine.modalities) > 1)
            risk.extend(res.malignancy_risk.tolist())
            tumor.extend(res.tumor_probability.tolist())
            for m, v in res.ablations.items():
                abl[m].extend(v.tolist())
            for r, (_, cached) in enumerate(chunk):
                findings.append(_findings(engine, res.lesion_prob, res.lesion_modality, r, cached))
                if finding_risk:
                    risk_r = float(res.malignancy_risk[r])
                    risked.append(_risked_findings(engine, res.lesion_prob, res.lesion_modality, r, cached, risk_r))
            advance()
    thr = float(engine.meta.get("metrics", {}).get("threshold", 0.5))
    scored = Scored(
        name,
        engine.modalities,
        [cid for cid, _ in ok],
        np.asarray(risk, dtype=np.float64),
        np.asarray(tumor, dtype=np.float64),
        {m: np.asarray(v, dtype=np.float64) for m, v in abl.items() if v},
        findings,
        risked,
        thr,
        engine.weights_sha256,
    )
    return scored, rejected


def _findings(
    engine: InferenceEngine, lesion: Any, modality: str | None, row: int, cached: dict[str, CachedInput]
) -> list[tuple[tuple[float, float, float], float]]:
    if lesion is None or modality is None or not cached[modality].present:
        return []
    # Candidates below the engine's operating cut-off too, so the FROC can be swept on this cohort.
    cfg = replace(engine.detection, min_confidence=min(0.1, engine.detection.min_confidence), max_findings=16)
    found = find_lesions(lesion[row], engine.spec.imaging.spacing_mm, cfg)
    meta = cached[modality].meta
    return [(voxel_to_patient(engine.plugins[modality], meta, f.center_voxel), f.confidence) for f in found]


def _risked_findings(
    engine: InferenceEngine, lesion: Any, modality: str | None, row: int, cached: dict[str, CachedInput], risk: float
) -> list[tuple[tuple[float, float, float], float, dict[str, float]]]:
    """The findings a prediction would carry, each with its risk by isolation, by the confidence rule and by both."""
    if lesion is None or modality is None or not cached[modality].present:
        return []
    found, regions = find_lesion_regions(lesion[row], engine.spec.imaging.spacing_mm, engine.detection)
    batch = batch_of([cached], engine.modalities) if len(found) > 1 else None  # only several findings need it
    isolated = engine.risks_of(found, regions, risk, modality, batch)
    by_confidence = finding_risks(risk, [f.confidence for f in found])
    meta = cached[modality].meta
    return [
        (
            voxel_to_patient(engine.plugins[modality], meta, f.center_voxel),
            f.confidence,
            {"isolated": i, "by_confidence": c, "isolated_x_confidence": i * f.confidence},
        )
        for f, i, c in zip(found, isolated, by_confidence, strict=True)
    ]


def evaluate(
    manifest: Path | Cohort,
    model: str | Path,
    out: Path,
    compare: list[str | Path] | None = None,
    cache_dir: Path | None = None,
    device: str = "auto",
    n_boot: int = 1000,
    seed: int = 0,
    registry: Registry | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Metrics of ``model`` (and each ``compare`` model) on ``manifest``; writes JSON + Markdown + PNG to ``out``."""
    from mmclinic.training.report import write_report

    reg = registry or get_registry()
    engine = InferenceEngine.load(model, device=device, registry=reg)
    cohort = manifest if isinstance(manifest, Cohort) else load_cohort(manifest, engine.spec.labels)
    out.mkdir(parents=True, exist_ok=True)
    cache_root = cache_dir or out / "cache"
    main, rejected = score_model(engine, cohort, CaseCache(cache_root, engine), "fused", progress, finding_risk=True)
    if len(main.case_ids) < 2:
        raise InputError("evaluate.too_few_cases", f"{len(main.case_ids)} evaluable cases")
    # Each head is scored on its own label (the presence head's fallback is a training aid, not a truth).
    risk_label, presence_label = engine.spec.head("risk").label, engine.spec.head("presence").label
    labels = {c.case_id: float(c.labels[risk_label]) for c in cohort.cases if risk_label in c.labels}
    tumor_labels = {c.case_id: float(c.labels.get(presence_label, np.nan)) for c in cohort.cases}
    y = np.array([labels[c] for c in main.case_ids])
    yt = np.array([tumor_labels.get(c, np.nan) for c in main.case_ids])
    report: dict[str, Any] = {
        "manifest": str(manifest) if isinstance(manifest, Path) else "(in-memory cohort)",
        "model": str(model),
        "weights_sha256": engine.weights_sha256,
        "task": engine.task_name,
        "modalities": list(engine.modalities),
        "n_cases": len(main.case_ids),
        "n_rejected": len(rejected),
        "rejected_reasons": _count(rejected),
        "n_boot": n_boot,
        "fused": summarize(main.risk, y, threshold=main.threshold, n_boot=n_boot, seed=seed),
    }
    if np.isfinite(yt).all():
        report["fused"]["tumor_auroc"] = auroc(main.tumor, yt)
    report["ablation"] = {
        f"without_{m}": summarize(v, y, threshold=main.threshold, n_boot=n_boot, seed=seed)
        for m, v in main.ablations.items()
    }
    if IMAGING in engine.modalities and cohort.lesions:
        gts = [cohort.lesions.get(c, []) for c in main.case_ids]
        report["detection"] = detection_metrics(
            main.findings,
            gts,
            voxel_mm=min(engine.spec.imaging.spacing_mm),
            operating_confidence=engine.detection.min_confidence,
        )
        alone = lesion_alone_risks(cohort.ground_truth)
        if alone and all(c in alone for c in main.case_ids):
            report["finding_risk"] = finding_risk_metrics(main.risked_findings, gts, [alone[c] for c in main.case_ids])
    report["reference"] = _reference_scores(cohort, main.case_ids, y)
    curves: dict[str, Any] = {"fused": roc_points(main.risk, y)}
    report["compare"] = {}
    for other in compare or []:
        e2 = InferenceEngine.load(other, device=device, registry=reg)
        name = "+".join(e2.modalities)
        sc, _ = score_model(e2, cohort, CaseCache(cache_root, e2), name, progress)
        common = [i for i, c in enumerate(main.case_ids) if c in set(sc.case_ids)]
        idx = {c: i for i, c in enumerate(sc.case_ids)}
        other_risk = np.array([sc.risk[idx[main.case_ids[i]]] for i in common])
        y_c, main_c = y[common], main.risk[common]
        entry = summarize(other_risk, y_c, threshold=sc.threshold, n_boot=n_boot, seed=seed)
        entry["model"] = str(other)
        entry["modalities"] = list(e2.modalities)
        entry["fused_minus_this_auroc"] = paired_bootstrap_delta(auroc, main_c, other_risk, y_c, n_boot, seed)
        missing = sorted(set(engine.modalities) - set(e2.modalities))
        if len(missing) == 1 and missing[0] in main.ablations:
            # Same cases: the fused model with that modality removed vs. a model trained without it.
            abl = main.ablations[missing[0]][common]
            entry["fused_without_missing_minus_this_auroc"] = auroc(abl, y_c) - auroc(other_risk, y_c)
        report["compare"][name] = entry
        curves[name] = roc_points(other_risk, y_c)
    report["goals"] = _goals(report)
    write_report(out, report, curves, main, y)
    event(log, "evaluate.done", cases=len(main.case_ids), auroc=round(report["fused"]["auroc"], 4))
    return report


def _count(rejected: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rejected.values():
        out[r] = out.get(r, 0) + 1
    return out


def _reference_scores(cohort: Cohort, case_ids: list[str], y: F) -> dict[str, Any]:
    """AUROC of the generator's Bayes-optimal score and per-modality oracles on the same cases."""
    out: dict[str, Any] = {}
    gt = cohort.ground_truth
    true_p, observed = case_scores(gt, "p_malignant"), case_scores(gt, "p_observed")
    if all(c in true_p for c in case_ids):
        out.update(bayes_references([observed.get(c) for c in case_ids], [true_p[c] for c in case_ids], y))
    entries = gt.get("cases", {})
    if isinstance(entries, dict) and all(c in entries for c in case_ids):
        # Per-modality oracles E[p | that modality] as the generator computed them (``oracle_p``).
        mods = set.intersection(*(set(entries[c].get("oracle_p", {}) or {}) for c in case_ids)) if case_ids else set()
        for m in sorted(mods):
            out[f"oracle_{m}"] = auroc(np.array([float(entries[c]["oracle_p"][m]) for c in case_ids]), y)
    return out


def _goals(r: dict[str, Any]) -> dict[str, Any]:
    """The task's stated goals, each with the measured number and whether it was met."""
    goals: dict[str, Any] = {}
    auc = r["fused"]["auroc"]
    bayes = bayes_goal(auc, r["reference"])
    if bayes is not None:
        goals["auroc_vs_bayes"] = bayes
    goals["ece"] = ece_goal(r["fused"])
    singles = {k: v for k, v in r["compare"].items() if len(v["modalities"]) == 1}
    if singles:
        best = max(singles, key=lambda k: singles[k]["auroc"])
        d = singles[best]["fused_minus_this_auroc"]
        goals["fused_vs_best_single"] = {
            "target": "delta >= 0.05 with CI excluding 0",
            "best_single": best,
            "delta": d["delta"],
            "ci95": d["ci95"],
            "met": d["delta"] >= 0.05 and d["ci95"][0] > 0,
        }
    pairs = {
        k: v["fused_without_missing_minus_this_auroc"]
        for k, v in r["compare"].items()
        if "fused_without_missing_minus_this_auroc" in v
    }
    if pairs:
        goals["missing_modality"] = {
            "target": "|delta| <= 0.01 (or better)",
            "deltas": pairs,
            "met": all(d >= -0.01 for d in pairs.values()),
        }
    det = r.get("detection")
    if det:
        goals["detection"] = {
            "target": "sensitivity >= 0.90 at <= 1 FP/scan (lesions >= 6 mm), median centre error <= 1 voxel",
            "sensitivity": det["sensitivity"],
            "median_center_error_voxels": det["median_center_error_voxels"],
            "met": det["sensitivity"] >= 0.9 and det["median_center_error_voxels"] <= 1.0,
        }
    return goals
