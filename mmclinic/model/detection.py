"""Lesion map → findings: threshold, connected components, soft centroid and equivalent-sphere diameter."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage


@dataclass(frozen=True)
class DetectionConfig:
    """Post-processing of the lesion probability map (stored in every checkpoint)."""

    threshold: float = 0.3  # voxel probability that makes a voxel part of a candidate
    min_confidence: float = 0.3  # candidates whose peak probability is lower are dropped
    max_findings: int = 8


@dataclass(frozen=True)
class VoxelFinding:
    """One candidate in the model's resampled grid (voxel indices, float for sub-voxel centres)."""

    center_voxel: tuple[float, float, float]
    diameter_mm: float
    confidence: float
    n_voxels: int


def find_lesions(
    prob: NDArray[np.floating], spacing_mm: tuple[float, float, float], cfg: DetectionConfig
) -> list[VoxelFinding]:
    """Candidates in a 3-D probability map ``[X, Y, Z]``, most confident first (see ``find_lesion_regions``)."""
    return find_lesion_regions(prob, spacing_mm, cfg)[0]


def find_lesion_regions(
    prob: NDArray[np.floating], spacing_mm: tuple[float, float, float], cfg: DetectionConfig
) -> tuple[list[VoxelFinding], NDArray[np.int32]]:
    """Candidates in a 3-D probability map ``[X, Y, Z]``, most confident first, and their voxels.

    The second value labels each voxel with ``k + 1`` when it belongs to the ``k``-th candidate returned
    (0 elsewhere, also for components dropped by ``min_confidence`` or ``max_findings``).

    The centre is the probability-weighted centroid (sub-voxel: at 5 mm spacing a whole-voxel
    centre would be off by up to 2.5 mm per axis). The diameter is that of the sphere whose volume
    equals the component's *soft* volume (sum of probabilities × voxel volume), which degrades
    gracefully for lesions smaller than a voxel, where counting thresholded voxels cannot.
    """
    if prob.ndim != 3:
        raise ValueError(f"lesion map must be 3-D, got shape {prob.shape}")
    p = np.nan_to_num(prob.astype(np.float64), nan=0.0)
    labels, n = ndimage.label(p >= cfg.threshold, structure=np.ones((3, 3, 3), dtype=bool))
    regions = np.zeros(p.shape, dtype=np.int32)
    if n == 0:
        return [], regions
    idx = np.arange(1, n + 1)
    peaks = np.asarray(ndimage.maximum(p, labels, idx), dtype=np.float64)
    sums = np.asarray(ndimage.sum(p, labels, idx), dtype=np.float64)
    counts = np.asarray(ndimage.sum(np.ones_like(p), labels, idx), dtype=np.float64)
    centres = ndimage.center_of_mass(p, labels, idx)
    voxel_mm3 = float(np.prod(spacing_mm))
    found: list[tuple[VoxelFinding, int]] = []
    for k in range(n):
        if peaks[k] < cfg.min_confidence:
            continue
        volume = sums[k] * voxel_mm3
        diameter = float((6.0 * volume / np.pi) ** (1.0 / 3.0))
        c = centres[k]
        finding = VoxelFinding(
            center_voxel=(float(c[0]), float(c[1]), float(c[2])),
            diameter_mm=diameter,
            confidence=float(peaks[k]),
            n_voxels=int(counts[k]),
        )
        found.append((finding, k + 1))
    found.sort(key=lambda f: -f[0].confidence)  # stable: equal peaks keep their label order
    kept = found[: cfg.max_findings]
    for rank, (_, label) in enumerate(kept, 1):
        regions[labels == label] = rank
    return [f for f, _ in kept], regions


def isolation_masks(regions: NDArray[np.int32], n_findings: int) -> NDArray[np.bool_]:
    """``[n_findings, X, Y, Z]``: for finding ``k``, the other findings' voxels (grown by one voxel).

    What an encoder reads as background to describe finding ``k`` alone. The one-voxel margin takes in
    the sub-threshold rim of each other finding, which still carries lesion logit; finding ``k``'s own
    voxels are never suppressed.
    """
    grow = np.ones((3, 3, 3), dtype=bool)
    out = np.zeros((n_findings, *regions.shape), dtype=bool)
    for k in range(n_findings):
        others = (regions > 0) & (regions != k + 1)
        out[k] = ndimage.binary_dilation(others, structure=grow) & (regions != k + 1)
    return out


def finding_risks(case_risk: float, confidences: list[float]) -> list[float]:
    """Per-finding malignancy risk by rule, for an imaging encoder that cannot ``isolate`` a finding.

    The most confident finding carries the full case risk; weaker candidates are scaled by their
    confidence relative to it (a likely false positive should not inherit the full case risk).
    """
    if not confidences:
        return []
    top = max(confidences)
    return [float(case_risk * (c / top if top > 0 else 0.0)) for c in confidences]


def sphere_mask(
    shape: tuple[int, int, int],
    center_voxel: tuple[float, float, float],
    radius_mm: float,
    spacing_mm: tuple[float, float, float],
) -> NDArray[np.bool_]:
    """Boolean ball in a voxel grid; at least the centre voxel is set when it lies inside the grid.

    Used to build lesion-map targets from ground-truth centres and diameters.
    """
    grids = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    d2 = sum(((g - c) * sp) ** 2 for g, c, sp in zip(grids, center_voxel, spacing_mm, strict=True))
    mask: NDArray[np.bool_] = np.asarray(d2 <= radius_mm**2)
    ijk = tuple(round(c) for c in center_voxel)
    if all(0 <= i < s for i, s in zip(ijk, shape, strict=True)):
        mask[ijk] = True  # a lesion smaller than a voxel still gets one positive voxel
    return mask
