"""Series geometry from headers: slice order, uniformity checks and the voxel→patient (LPS) affine."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mmclinic_imaging_dicom import reasons as R
from mmclinic_imaging_dicom.headers import FrameInfo, InstanceHeader

# A 1 % deviation from unit length or orthogonality is a broken header, not a rounding issue.
_ORTHO_TOL = 0.01


class GeometryDefect(Exception):
    """A series whose headers do not describe one regular 3D grid (carries a stable reason code)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class SliceRef:
    """One 2D slice of the volume: which instance, which frame (0-based), and its position (LPS mm)."""

    instance: InstanceHeader
    frame: int
    position: tuple[float, float, float]
    slope: float
    intercept: float


@dataclass(frozen=True)
class SeriesGeometry:
    """A regular grid: ``affine_lps`` maps (column i, row j, slice k) to patient LPS mm."""

    slices: list[SliceRef]  # sorted along the slice normal, k = 0..n-1
    rows: int
    cols: int
    affine_lps: np.ndarray
    normal: tuple[float, float, float]
    slice_step_mm: float  # distance between slice centres along the normal
    thickness_mm: float  # SliceThickness, or the step when absent
    pixel_spacing: tuple[float, float]  # (between rows, between columns)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(X = columns, Y = rows, Z = slices), the axis order of the volume array."""
        return (self.cols, self.rows, len(self.slices))


def _unit(v: np.ndarray) -> np.ndarray:
    return np.asarray(v / np.linalg.norm(v), dtype=np.float64)


def _orientation(info: FrameInfo) -> tuple[np.ndarray, np.ndarray]:
    assert info.orientation is not None
    o = np.asarray(info.orientation, dtype=np.float64)
    r, c = o[:3], o[3:]
    nr, nc = float(np.linalg.norm(r)), float(np.linalg.norm(c))
    if abs(nr - 1) > _ORTHO_TOL or abs(nc - 1) > _ORTHO_TOL or abs(float(r @ c)) > _ORTHO_TOL * max(nr * nc, 1e-9):
        raise GeometryDefect(R.MISSING_GEOMETRY, "ImageOrientationPatient is not two orthonormal vectors")
    return r / nr, c / nc


def axial_tilt_deg(normal: tuple[float, float, float] | np.ndarray) -> float:
    """Angle between the slice normal and the patient's head-feet axis (0 = perfectly axial)."""
    n = _unit(np.asarray(normal, dtype=np.float64))
    return math.degrees(math.acos(min(1.0, abs(float(n[2])))))


def first_normal(instances: list[InstanceHeader]) -> tuple[float, float, float] | None:
    """The slice normal of the first frame with an orientation (for rules that need only that)."""
    for inst in instances:
        for info in inst.frame_infos:
            if info.orientation is not None:
                try:
                    r, c = _orientation(info)
                except GeometryDefect:
                    return None
                n = np.cross(r, c)
                return (float(n[0]), float(n[1]), float(n[2]))
    return None


def build_geometry(
    instances: list[InstanceHeader], spacing_tolerance: float, orientation_tolerance_deg: float
) -> SeriesGeometry:
    """Sort the frames of a series into a volume and check it is one regular grid; ``GeometryDefect`` if not."""
    frames: list[tuple[InstanceHeader, int, FrameInfo]] = []
    for inst in instances:
        if inst.geometry_error is not None:
            raise GeometryDefect(R.MISSING_GEOMETRY, inst.geometry_error)
        frames.extend((inst, i, info) for i, info in enumerate(inst.frame_infos))
    if not frames:
        raise GeometryDefect(R.MISSING_GEOMETRY, "no frames")
    for _, _, info in frames:
        if info.position is None or info.orientation is None or info.pixel_spacing is None:
            missing = [
                name for name, v in (("position", info.position), ("orientation", info.orientation)) if v is None
            ] + (["pixel spacing"] if info.pixel_spacing is None else [])
            raise GeometryDefect(R.MISSING_GEOMETRY, f"a frame lacks {', '.join(missing)}")

    r0, c0 = _orientation(frames[0][2])
    cos_tol = math.cos(math.radians(orientation_tolerance_deg))
    for _, _, info in frames[1:]:
        r, c = _orientation(info)
        if float(r @ r0) < cos_tol or float(c @ c0) < cos_tol:
            raise GeometryDefect(R.MIXED_ORIENTATION, "slices of the series have different orientations")

    first = frames[0][0]
    spacing0 = frames[0][2].pixel_spacing
    assert spacing0 is not None
    if min(spacing0) <= 0:
        raise GeometryDefect(R.MISSING_GEOMETRY, "PixelSpacing must be positive")
    for inst, _, info in frames:
        if (inst.rows, inst.cols) != (first.rows, first.cols):
            raise GeometryDefect(R.INCONSISTENT_GEOMETRY, "instances differ in Rows/Columns")
        assert info.pixel_spacing is not None
        if not np.allclose(info.pixel_spacing, spacing0, rtol=1e-3, atol=1e-4):
            raise GeometryDefect(R.INCONSISTENT_GEOMETRY, "instances differ in PixelSpacing")

    normal = np.cross(r0, c0)
    positions = np.array([info.position for _, _, info in frames], dtype=np.float64)
    depth = positions @ normal
    order = np.argsort(depth, kind="stable")
    positions, depth = positions[order], depth[order]
    n = len(frames)
    thickness = frames[0][2].thickness
    if n == 1:
        step_vec = normal * (thickness if thickness and thickness > 0 else 1.0)
    else:
        gaps = np.diff(depth)
        # Two different instances at one position: a second acquisition mixed into the series.
        if float(gaps.min()) < 1e-3:
            raise GeometryDefect(R.NONUNIFORM_SPACING, "two slices share one position")
        step_vec = (positions[-1] - positions[0]) / (n - 1)
        steps = np.diff(positions, axis=0)
        deviation = np.linalg.norm(steps - step_vec, axis=1) / np.linalg.norm(step_vec)
        worst = int(np.argmax(deviation))
        if float(deviation[worst]) > spacing_tolerance:
            raise GeometryDefect(
                R.NONUNIFORM_SPACING,
                f"slice step {float(gaps[worst]):.3g} mm vs mean {float(np.linalg.norm(step_vec)):.3g} mm "
                f"(tolerance {spacing_tolerance:.0%})",
            )
    step_along_normal = float(step_vec @ normal)

    affine = np.eye(4)
    affine[:3, 0] = r0 * spacing0[1]  # column index moves along the row direction by the column spacing
    affine[:3, 1] = c0 * spacing0[0]
    affine[:3, 2] = step_vec  # keeps gantry-tilt shear: slices need not stack along the normal
    affine[:3, 3] = positions[0]
    ordered = [frames[int(i)] for i in order]
    slices = [
        SliceRef(inst, idx, tuple(float(v) for v in positions[k]), info.slope, info.intercept)  # type: ignore[arg-type]
        for k, (inst, idx, info) in enumerate(ordered)
    ]
    return SeriesGeometry(
        slices=slices,
        rows=first.rows,
        cols=first.cols,
        affine_lps=affine,
        normal=(float(normal[0]), float(normal[1]), float(normal[2])),
        slice_step_mm=step_along_normal,
        thickness_mm=float(thickness) if thickness and thickness > 0 else step_along_normal,
        pixel_spacing=(float(spacing0[0]), float(spacing0[1])),
    )
