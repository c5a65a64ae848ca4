"""Choose the findings' post-processing (voxel threshold, confidence cut-off) on validation scans."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mmclinic.engine.geometry import voxel_to_patient
from mmclinic.model.detection import DetectionConfig, find_lesions
from mmclinic.training.metrics import GtLesion, detection_metrics

# Voxel thresholds of the findings' map tried on validation.
VOXEL_THRESHOLDS: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5)

Located = list[tuple[tuple[float, float, float], float]]  # (centre in patient mm, confidence) per finding


def candidates(
    prob: NDArray[np.floating], plugin: Any, meta: dict[str, Any], spacing_mm: tuple[float, float, float]
) -> dict[float, Located]:
    """One scan's candidates at every voxel threshold, with the confidence cut-off left open."""
    out: dict[float, Located] = {}
    for t in VOXEL_THRESHOLDS:
        cfg = DetectionConfig(threshold=t, min_confidence=min(t, 0.1), max_findings=16)
        found = find_lesions(prob, spacing_mm, cfg)
        out[t] = [(voxel_to_patient(plugin, meta, f.center_voxel), f.confidence) for f in found]
    return out


def tune_detection(
    found: Sequence[dict[float, Located]], truth: Sequence[Sequence[GtLesion]], voxel_mm: float, max_findings: int = 8
) -> tuple[DetectionConfig, dict[str, Any]]:
    """The post-processing with the highest sensitivity at ≤ 1 false positive per scan, and its metrics.

    The voxel threshold decides which candidates exist at all: a small lesion whose map peaks below it
    can never be found, whatever the confidence cut-off, so it is tuned too (a tie keeps the higher
    threshold, which splits neighbours more cleanly).
    """
    results = {t: detection_metrics([f[t] for f in found], truth, voxel_mm=voxel_mm) for t in VOXEL_THRESHOLDS}
    best_t = max(VOXEL_THRESHOLDS, key=lambda t: (np.nan_to_num(results[t]["sensitivity"]), t))
    res = results[best_t]
    thr = res["confidence_threshold"]
    cut = float(thr) if math.isfinite(thr) else 0.5
    cfg = DetectionConfig(best_t, max(min(best_t, 0.1), cut), max_findings)
    summary = {k: v for k, v in res.items() if k != "froc"} | {
        "voxel_threshold": best_t,
        "min_confidence": cfg.min_confidence,
        "sensitivity_by_voxel_threshold": {str(t): results[t]["sensitivity"] for t in VOXEL_THRESHOLDS},
    }
    return cfg, summary
