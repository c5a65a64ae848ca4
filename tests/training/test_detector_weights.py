"""Detector training pieces: lesion-balanced voxel weights and the choice of the findings' post-processing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmclinic.training.detection_tuning import VOXEL_THRESHOLDS, tune_detection
from mmclinic.training.detector import lesion_weights
from mmclinic.training.metrics import GtLesion


def test_each_lesion_weighs_at_least_as_much_as_a_lesion_of_the_reference_size() -> None:
    target = torch.zeros(1, 10, 10, 10)
    target[0, 1, 1, 1] = 1.0  # one voxel
    target[0, 5:8, 5:8, 5:8] = 1.0  # 27 voxels
    w = lesion_weights(target, lesion_voxels=30.0)
    assert float(w[0, 1, 1, 1]) == pytest.approx(30.0)
    assert float(w[0, 6, 6, 6]) == pytest.approx(30.0 / 27.0)
    assert float(w[0, 0, 9, 0]) == 1.0
    # Both lesions carry the same total weight: a one-voxel lesion counts as much as the large one.
    assert float(w[0, 1, 1, 1]) == pytest.approx(float(w[0, 5:8, 5:8, 5:8].sum()))
    assert torch.equal(lesion_weights(torch.zeros(1, 4, 4, 4), 30.0), torch.ones(1, 4, 4, 4))


def test_tuning_picks_the_voxel_threshold_that_finds_the_most_lesions() -> None:
    lesions = [[GtLesion((0.0, 0.0, 0.0), 8.0)], [GtLesion((0.0, 0.0, 0.0), 8.0)]]
    # Only the lowest voxel threshold lets the second scan's faint lesion exist as a candidate.
    found = []
    for faint in (0.9, 0.06):
        found.append({t: ([((0.0, 0.0, 0.0), faint)] if faint >= t else []) for t in VOXEL_THRESHOLDS})
    cfg, summary = tune_detection(found, lesions, voxel_mm=5.0)
    assert cfg.threshold == min(VOXEL_THRESHOLDS) and summary["sensitivity"] == 1.0
    assert cfg.min_confidence <= 0.06
    assert summary["sensitivity_by_voxel_threshold"][str(0.5)] == 0.5
    # With every lesion found at each threshold, the tie keeps the highest.
    easy = [{t: [((0.0, 0.0, 0.0), 0.9)] for t in VOXEL_THRESHOLDS}] * 2
    assert tune_detection(easy, lesions, voxel_mm=5.0)[0].threshold == max(VOXEL_THRESHOLDS)
    assert np.isfinite(summary["median_center_error_mm"])
