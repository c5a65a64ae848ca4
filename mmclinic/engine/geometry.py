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


def _map(plugin: Any, meta: dict[str, Any], point: Sequence[float], hook_name: str, inverse: bool) -> Point:
    """The plugin's own mapping when it has one, else the affine in ``meta`` (inverted for patient → voxel)."""
    hook = _hook(plugin, meta, hook_name)
    if hook is not None:
        out = [float(v) for v in hook(point)]
    else:
        aff = _affine(meta)
        if aff is None:
            raise ModelError("model.no_geometry", f"imaging plugin provides no {hook_name.replace('_', '-')} mapping")
        matrix = np.linalg.inv(aff) if inverse else aff
        out = [float(v) for v in (matrix @ np.array([*point, 1.0]))[:3]]
    return (out[0], out[1], out[2])


def voxel_to_patient(plugin: Any, meta: dict[str, Any], ijk: Sequence[float]) -> Point:
    """Centre of voxel ``ijk`` (fractional allowed) in patient LPS millimetres."""
    return _map(plugin, meta, ijk, "voxel_to_patient", inverse=False)


def patient_to_voxel(plugin: Any, meta: dict[str, Any], xyz: Sequence[float]) -> Point:
    """Inverse mapping: patient LPS mm → fractional voxel index in the resampled grid."""
    return _map(plugin, meta, xyz, "patient_to_voxel", inverse=True)
