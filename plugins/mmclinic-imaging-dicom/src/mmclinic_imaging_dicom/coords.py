"""Map voxels of the model's input array to DICOM patient coordinates (LPS mm) and back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# MONAI works in RAS; DICOM patient coordinates are LPS: flip x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _affine(meta: Mapping[str, Any], key: str = "affine_lps") -> np.ndarray:
    affine = np.asarray(meta[key], dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"meta[{key!r}] must be a 4×4 matrix")
    return affine


def voxel_to_patient_mm(meta: Mapping[str, Any], ijk: Sequence[float]) -> tuple[float, float, float]:
    """Patient position (LPS mm) of voxel ``ijk`` of ``ModalityInput.data["image"][0]`` (fractional allowed)."""
    p = _affine(meta) @ np.array([float(ijk[0]), float(ijk[1]), float(ijk[2]), 1.0])
    return (float(p[0]), float(p[1]), float(p[2]))


def patient_mm_to_voxel(meta: Mapping[str, Any], xyz: Sequence[float]) -> tuple[float, float, float]:
    """Fractional voxel index in the model's input array of a patient position (LPS mm); may lie outside."""
    v = np.linalg.solve(_affine(meta), np.array([float(xyz[0]), float(xyz[1]), float(xyz[2]), 1.0]))
    return (float(v[0]), float(v[1]), float(v[2]))


def voxel_size_mm(meta: Mapping[str, Any]) -> tuple[float, float, float]:
    """Edge lengths (mm) of one voxel of the model's input array."""
    norms = np.linalg.norm(_affine(meta)[:3, :3], axis=0)
    return (float(norms[0]), float(norms[1]), float(norms[2]))


def nearest_source_slice(meta: Mapping[str, Any], xyz: Sequence[float]) -> tuple[str, int]:
    """SOP Instance UID and 1-based frame number of the source slice nearest a patient position.

    What a DICOM SR needs to reference a finding's key image.
    """
    src = np.linalg.solve(_affine(meta, "source_affine_lps"), np.array([*map(float, xyz), 1.0]))
    slices = meta["source_slices"]
    k = int(np.clip(round(float(src[2])), 0, len(slices) - 1))
    sop, frame = slices[k]
    return str(sop), int(frame)
