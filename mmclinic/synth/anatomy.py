"""Chest CT phantom: random body / lung / heart / spine / vessel anatomy, lesion placement and HU rendering.

Coordinates are DICOM patient LPS millimetres (+x patient left, +y posterior, +z head). Voxel
``[k, r, c]`` of a rendered volume has its centre at ``geometry.voxel_to_mm``. Partial volume is modelled
with soft occupancies (first-order signed distances for the anatomy, Gaussian tube profiles for vessels)
and, for lesions, by supersampling each voxel so that small nodules keep their true volume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import gaussian_filter

F = NDArray[np.float64]

AIR_HU = -1000.0
FAT_HU = -100.0
SOFT_HU = 45.0
LUNG_HU = -850.0
BLOOD_HU = 40.0
BONE_HU = 700.0
GGO_HU = -500.0
SOLID_HU = 30.0


@dataclass(frozen=True)
class Geometry:
    """The voxel grid of a generated series (axial, identity orientation, centred on the origin)."""

    rows: int = 64
    cols: int = 64
    slices: int = 32
    pixel_spacing: float = 5.0
    slice_thickness: float = 5.0

    def axes(self) -> tuple[F, F, F]:
        """Voxel-centre coordinates along z (slices), y (rows) and x (columns)."""
        z = ((np.arange(self.slices) - (self.slices - 1) / 2) * self.slice_thickness).astype(np.float64)
        y = ((np.arange(self.rows) - (self.rows - 1) / 2) * self.pixel_spacing).astype(np.float64)
        x = ((np.arange(self.cols) - (self.cols - 1) / 2) * self.pixel_spacing).astype(np.float64)
        return z, y, x

    def voxel_to_mm(self, k: float, r: float, c: float) -> tuple[float, float, float]:
        """LPS position (x, y, z) of voxel (slice k, row r, column c)."""
        z, y, x = self.axes()
        return (
            float(x[0] + c * self.pixel_spacing),
            float(y[0] + r * self.pixel_spacing),
            float(z[0] + k * self.slice_thickness),
        )


@dataclass(frozen=True)
class Lesion:
    """One nodule: centre (LPS mm), diameter, margin and density."""

    center_mm: tuple[float, float, float]
    diameter_mm: float
    margin: str  # "smooth" | "spiculated"
    density: str  # "solid" | "part_solid"


@dataclass(frozen=True)
class Anatomy:
    """Per-case body habitus (all mm)."""

    body_ax: float
    body_ay: float
    fat: float
    lung_cx: tuple[float, float]  # right lung (-x), left lung (+x)
    lung_cy: float
    lung_a: tuple[tuple[float, float, float], tuple[float, float, float]]
    lung_zc: float
    lung_base: float
    heart_c: tuple[float, float, float]
    heart_a: tuple[float, float, float]
    spine_y: float
    rib_phase: float
    noise_hu: float


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """A plausible adult chest; lungs fit inside the default 320 × 320 × 160 mm field."""
    body_ax = rng.uniform(140, 158)
    body_ay = rng.uniform(95, 112)
    lung_zc = rng.uniform(5, 15)
    right = (rng.uniform(48, 56), rng.uniform(66, 78), rng.uniform(82, 92))
    left = (right[0] * rng.uniform(0.88, 0.96), right[1] * rng.uniform(0.92, 1.0), right[2] * rng.uniform(0.95, 1.0))
    cx = rng.uniform(66, 76)
    return Anatomy(
        body_ax=body_ax,
        body_ay=body_ay,
        fat=rng.uniform(8, 20),
        lung_cx=(-cx, cx * rng.uniform(0.97, 1.03)),
        lung_cy=rng.uniform(2, 10),
        lung_a=(right, left),
        lung_zc=lung_zc,
        lung_base=lung_zc - rng.uniform(55, 65),
        heart_c=(rng.uniform(15, 25), rng.uniform(-32, -22), lung_zc - rng.uniform(40, 50)),
        heart_a=(rng.uniform(48, 56), rng.uniform(40, 46), rng.uniform(42, 50)),
        spine_y=body_ay - rng.uniform(30, 38),
        rib_phase=rng.uniform(0, 2 * np.pi),
        noise_hu=rng.uniform(12, 20),
    )


def _ellipsoid_q(d: list[F], a: tuple[float, ...]) -> F:
    return np.sqrt(sum((di / ai) ** 2 for di, ai in zip(d, a, strict=True)))


def inside_lung(anat: Anatomy, p: tuple[float, float, float], margin: float) -> bool:
    """True when point ``p`` lies in a lung at least ``margin`` mm from its border (and outside the heart)."""
    x, y, z = p
    if z < anat.lung_base + margin:
        return False
    hq = _ellipsoid_q(
        [np.array(x - anat.heart_c[0]), np.array(y - anat.heart_c[1]), np.array(z - anat.heart_c[2])],
        tuple(a + margin for a in anat.heart_a),
    )
    if float(hq) <= 1.0:
        return False
    for cx, a in zip(anat.lung_cx, anat.lung_a, strict=True):
        shrunk = tuple(max(ai - margin, 1.0) for ai in a)
        q = _ellipsoid_q([np.array(x - cx), np.array(y - anat.lung_cy), np.array(z - anat.lung_zc)], shrunk)
        if float(q) <= 1.0:
            return True
    return False


def place_lesion(anat: Anatomy, diameter: float, geom: Geometry, rng: np.random.Generator) -> tuple[float, ...]:
    """A random lesion centre inside a lung, the whole nodule inside the lung and the imaged slab."""
    zmax = (geom.slices - 1) / 2 * geom.slice_thickness - diameter / 2
    xmax = (geom.cols - 1) / 2 * geom.pixel_spacing - diameter / 2
    ymax = (geom.rows - 1) / 2 * geom.pixel_spacing - diameter / 2
    margin = diameter / 2 + 3.0
    for _ in range(2000):
        side = int(rng.integers(0, 2))
        a = anat.lung_a[side]
        p = (
            anat.lung_cx[side] + rng.uniform(-a[0], a[0]),
            anat.lung_cy + rng.uniform(-a[1], a[1]),
            anat.lung_zc + rng.uniform(-a[2], a[2]),
        )
        in_field = abs(p[0]) <= xmax and abs(p[1]) <= ymax and abs(p[2]) <= zmax
        if in_field and inside_lung(anat, p, margin):
            return tuple(round(v, 1) for v in p)
    # Unreachable for the default geometry; a tiny custom field falls back to the lung centre.
    return (round(anat.lung_cx[0], 1), round(anat.lung_cy, 1), round(float(np.clip(anat.lung_zc, -zmax, zmax)), 1))


def _soft(q: F, grad: F, width: float) -> F:
    """Occupancy from a normalised radius ``q`` (1 on the surface) via a first-order signed distance."""
    sd = (q - 1.0) / np.maximum(grad, 1e-6)
    return np.clip(0.5 - sd / width, 0.0, 1.0)


def _ellipse_occ(d: list[F], a: tuple[float, ...], width: float) -> F:
    q = np.maximum(_ellipsoid_q(d, a), 1e-6)
    grad = np.sqrt(sum((di / ai**2) ** 2 for di, ai in zip(d, a, strict=True))) / q
    return _soft(q, grad, width)


def _mix(vol: F, occ: F, hu: float | F) -> F:
    return vol * (1.0 - occ) + hu * occ


def _segment_dist(px: F, py: F, pz: F, a: F, b: F) -> F:
    ab = b - a
    t = ((px - a[0]) * ab[0] + (py - a[1]) * ab[1] + (pz - a[2]) * ab[2]) / max(float(ab @ ab), 1e-9)
    t = np.clip(t, 0.0, 1.0)
    return np.sqrt((px - a[0] - t * ab[0]) ** 2 + (py - a[1] - t * ab[1]) ** 2 + (pz - a[2] - t * ab[2]) ** 2)  # type: ignore[no-any-return]


def _vessel_tree(anat: Anatomy, rng: np.random.Generator) -> list[tuple[F, F, float]]:
    """Branching segments from each hilum towards the lung periphery (start, end, radius)."""
    segs: list[tuple[F, F, float]] = []
    for cx, a in zip(anat.lung_cx, anat.lung_a, strict=True):
        hilum = np.array([cx * 0.55, anat.lung_cy, anat.lung_zc - 10.0])
        for _ in range(6):
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            mid = np.array([cx, anat.lung_cy, anat.lung_zc]) + d * np.array(a) * 0.45
            segs.append((hilum, mid, 3.0))
            for _ in range(2):
                d2 = d + 0.6 * rng.normal(size=3)
                d2 /= np.linalg.norm(d2)
                end = np.array([cx, anat.lung_cy, anat.lung_zc]) + d2 * np.array(a) * 0.85
                segs.append((mid, end, 1.8))
    return segs


def _box(center: F, radius: float, axes: tuple[F, F, F]) -> tuple[slice, slice, slice]:
    out = []
    for c, ax in zip((center[2], center[1], center[0]), axes, strict=True):
        lo = int(np.searchsorted(ax, c - radius))
        hi = int(np.searchsorted(ax, c + radius, side="right"))
        out.append(slice(lo, hi))
    return out[0], out[1], out[2]


def _lesion_occupancy(
    lesion: Lesion, sub: tuple[F, F, F], rng: np.random.Generator
) -> tuple[F, F, tuple[F, ...], list[tuple[F, F, float]]]:
    """Shape parameters of one lesion and its (outer, core) inside-indicators at subsample points."""
    px, py, pz = sub
    c = np.array(lesion.center_mm)
    radius = lesion.diameter_mm / 2
    axes = tuple(radius * rng.uniform(0.85, 1.15, 3))
    d = [px - c[0], py - c[1], pz - c[2]]
    outer = _ellipsoid_q(d, axes) <= 1.0
    spicules: list[tuple[F, F, float]] = []
    if lesion.margin == "spiculated":
        for _ in range(int(rng.integers(6, 13))):
            u = rng.normal(size=3)
            u /= np.linalg.norm(u)
            length = radius * rng.uniform(0.6, 1.3) + 3.0
            spicules.append((c, c + u * (radius + length), float(rng.uniform(1.0, 1.8))))
        for a, b, r in spicules:
            ab = b - a
            t = np.clip(((px - a[0]) * ab[0] + (py - a[1]) * ab[1] + (pz - a[2]) * ab[2]) / float(ab @ ab), 0, 1)
            dist = _segment_dist(px, py, pz, a, b)
            outer |= dist <= r * (1.0 - 0.7 * t)  # spicules taper towards their tips
    core_frac = rng.uniform(0.35, 0.55) if lesion.density == "part_solid" else 1.0
    core = _ellipsoid_q(d, tuple(ax * core_frac for ax in axes)) <= 1.0
    return outer.astype(np.float64), core.astype(np.float64), axes, spicules


def _render_lesion(vol: F, lesion: Lesion, geom: Geometry, rng: np.random.Generator, ss: int = 4) -> None:
    axes = geom.axes()
    reach = lesion.diameter_mm / 2 * (2.5 if lesion.margin == "spiculated" else 1.2) + 6.0
    kz, ky, kx = _box(np.array(lesion.center_mm), reach, axes)
    zc, yc, xc = axes[0][kz], axes[1][ky], axes[2][kx]
    if min(zc.size, yc.size, xc.size) == 0:
        return
    off = (np.arange(ss) + 0.5) / ss - 0.5
    # Subsample positions [nz, ss, ny, ss, nx, ss]: averaging over the ss axes integrates each voxel.
    pz = (zc[:, None] + off[None, :] * geom.slice_thickness)[:, :, None, None, None, None]
    py = (yc[:, None] + off[None, :] * geom.pixel_spacing)[None, None, :, :, None, None]
    px = (xc[:, None] + off[None, :] * geom.pixel_spacing)[None, None, None, None, :, :]
    outer, core, _, _ = _lesion_occupancy(lesion, (px, py, pz), rng)
    outer_occ = np.broadcast_to(outer, np.broadcast_shapes(px.shape, py.shape, pz.shape)).mean(axis=(1, 3, 5))
    core_occ = np.broadcast_to(core, np.broadcast_shapes(px.shape, py.shape, pz.shape)).mean(axis=(1, 3, 5))
    solid = SOLID_HU + rng.normal(0, 12)
    region = vol[kz, ky, kx]
    if lesion.density == "part_solid":
        region = _mix(region, outer_occ, GGO_HU + rng.normal(0, 50))
        region = _mix(region, core_occ, solid)
    else:
        region = _mix(region, np.maximum(outer_occ, core_occ), solid)
    vol[kz, ky, kx] = region


def render_ct(anat: Anatomy, lesions: list[Lesion], geom: Geometry, rng: np.random.Generator) -> NDArray[np.int16]:
    """HU volume ``[slices, rows, cols]`` (int16) of one case."""
    z1, y1, x1 = geom.axes()
    z, y, x = z1[:, None, None], y1[None, :, None], x1[None, None, :]
    w = geom.pixel_spacing
    vol = np.full((geom.slices, geom.rows, geom.cols), AIR_HU)
    flat = [x, y]
    vol = _mix(vol, _ellipse_occ(flat, (anat.body_ax, anat.body_ay), w), FAT_HU)
    inner = (anat.body_ax - anat.fat, anat.body_ay - anat.fat)
    inner_occ = _ellipse_occ(flat, inner, w)
    vol = _mix(vol, inner_occ, SOFT_HU)
    # Ribs: bone arcs in a ring just inside the muscle wall, alternating along z like a rib cage.
    ring = inner_occ - _ellipse_occ(flat, (inner[0] - 9.0, inner[1] - 9.0), w)
    angle = np.arctan2(y, x)
    ribs = np.sin(z * (2 * np.pi / 28.0) + anat.rib_phase + 2.0 * angle) > 0.4
    vol = _mix(vol, ring * ribs, BONE_HU * 0.8)
    lung_occ = np.zeros_like(vol)
    for cx, a in zip(anat.lung_cx, anat.lung_a, strict=True):
        occ = _ellipse_occ([x - cx, y - anat.lung_cy, z - anat.lung_zc], a, w)
        lung_occ = np.maximum(lung_occ, occ)
    lung_occ *= np.clip(0.5 + (z - anat.lung_base) / geom.slice_thickness, 0.0, 1.0)
    heart = _ellipse_occ([x - anat.heart_c[0], y - anat.heart_c[1], z - anat.heart_c[2]], anat.heart_a, w)
    lung_occ = lung_occ * (1.0 - heart)
    # Dependent (posterior) lung is slightly denser, as in a supine patient.
    vol = _mix(vol, lung_occ, LUNG_HU + 0.25 * (y))
    vol = _mix(vol, heart, BLOOD_HU)
    for va, vb, r in _vessel_tree(anat, rng):
        kz, ky, kx = _box((va + vb) / 2, float(np.linalg.norm(vb - va)) / 2 + 3 * w, (z1, y1, x1))
        dist = _segment_dist(x1[None, None, kx], y1[None, ky, None], z1[kz, None, None], va, vb)
        s2 = r * r / 2 + w * w / (2 * np.pi)
        occ = np.minimum(1.0, r * r / (2 * s2) * np.exp(-(dist**2) / (2 * s2))) * lung_occ[kz, ky, kx]
        vol[kz, ky, kx] = _mix(vol[kz, ky, kx], occ, BLOOD_HU)
    for cy, rad, hu in ((anat.spine_y, 17.0, BONE_HU * 0.55), (anat.spine_y + 24.0, 7.0, 15.0)):
        vol = _mix(vol, _ellipse_occ([x, y - cy], (rad, rad), w), hu)
    for lesion in lesions:
        _render_lesion(vol, lesion, geom, rng)
    # Reconstruction blur, then quantum noise; HU are stored as integers by the scanner.
    vol = gaussian_filter(vol, sigma=0.5) + rng.normal(0.0, anat.noise_hu, vol.shape)
    out: NDArray[np.int16] = np.clip(np.round(vol), -1024, 3071).astype(np.int16)
    return out
