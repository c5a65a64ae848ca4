"""Voxel ↔ patient (LPS mm) mapping of the imaging plugin's resampled grid, found without importing it.

Supported, in order: plugin methods ``voxel_to_patient(meta, ijk)`` / ``patient_to_voxel(meta, xyz)``,
callables of the same names in ``ModalityInput.meta``, or a 4×4 ``meta["affine_lps"]`` / ``meta["affine"]``
(voxel index of the model's input array → LPS mm).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mmclinic.errors import ModelError

Point = tuple[float, float, float]


def _affine(meta: dict[str, Any]) -> np.ndarray[Any, np.dtype[np.float64]] | None:
    aff = meta.get("affine_lps", meta.get("affine"))
    if aff is None:
        return None
    arr = np.asarray(aff, dtype=np.float64)
    if arr.shape != (4, 4):
        raise ModelError("model.bad_geometry", f"imaging affine must be 4x4, got {arr.shape}")
    return arr


def _hook(plugin: Any, meta: dict[str, Any], name: str) -> Callable[[Sequence[float]], Sequence[float]] | None:
    method: Any = getattr(plugin, name, None)
    if callable(method):
        return lambda p: method(meta, p)
    fn: Any = meta.get(name)
    if callable(fn):
        return fn  # type: ignore[no-any-return]
    return None


def voxel_to_patient(plugin: Any, meta: dict[str, Any], ijk: Sequence[float]) -> Point:
    """Centre of voxel ``ijk`` (fractional allowed) in patient LPS millimetres."""
    hook = _hook(plugin, meta, "voxel_to_patient")
    if hook is not None:
        out = [float(v) for v in hook(ijk)]
    else:
        aff = _affine(meta)
        if aff is None:
            raise ModelError("model.no_geometry", "imaging plugin provides no voxel-to-patient mapping")
        out = [float(v) for v in (aff @ np.array([*ijk, 1.0]))[:3]]
    return (out[0], out[1], out[2])


def patient_to_voxel(plugin: Any, meta: dict[str, Any], xyz: Sequence[float]) -> Point:
    """Inverse mapping: patient LPS mm → fractional voxel index in the resampled grid."""
    hook = _hook(plugin, meta, "patient_to_voxel")
    if hook is not None:
        out = [float(v) for v in hook(xyz)]
    else:
        aff = _affine(meta)
        if aff is None:
            raise ModelError("model.no_geometry", "imaging plugin provides no patient-to-voxel mapping")
        out = [float(v) for v in (np.linalg.inv(aff) @ np.array([*xyz, 1.0]))[:3]]
    return (out[0], out[1], out[2])
