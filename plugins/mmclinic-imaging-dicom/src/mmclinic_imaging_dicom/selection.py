"""Declarative series selection: apply the configured rules to every series, record why, pick one."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydicom.pixels.decoders.base import get_decoder

from mmclinic.errors import InputError
from mmclinic_imaging_dicom import reasons as R
from mmclinic_imaging_dicom.config import CtDicomConfig
from mmclinic_imaging_dicom.geometry import GeometryDefect, SeriesGeometry, axial_tilt_deg, build_geometry, first_normal
from mmclinic_imaging_dicom.headers import SeriesHeaders, StudyScan


@dataclass
class SeriesDecision:
    """The verdict on one series: rule failures, a defect (bad data), or eligible."""

    series: SeriesHeaders
    rule_failures: list[tuple[str, str]] = field(default_factory=list)
    defects: list[tuple[str, str]] = field(default_factory=list)
    geometry: SeriesGeometry | None = None
    status: str = "skipped"

    @property
    def eligible(self) -> bool:
        return not self.rule_failures and not self.defects

    def thickness(self) -> float:
        if self.geometry is not None:
            return self.geometry.thickness_mm
        for inst in self.series.instances:
            for info in inst.frame_infos:
                if info.thickness:
                    return info.thickness
        return float("inf")

    def summary(self) -> dict[str, Any]:
        first = self.series.first
        thickness = self.thickness()
        return {
            "series_instance_uid": self.series.uid,
            "series_number": first.series_number,
            "description": first.description,
            "modality": first.modality,
            "sop_class_uid": first.sop_class_uid,
            "image_type": list(first.image_type),
            "instances": len(self.series.instances),
            "frames": self.series.n_frames,
            "duplicates_removed": self.series.duplicates,
            "rows": first.rows,
            "columns": first.cols,
            "slice_thickness_mm": None if thickness == float("inf") else round(thickness, 4),
            "transfer_syntaxes": sorted({i.transfer_syntax for i in self.series.instances}),
            "status": self.status,
            "reasons": [{"code": c, "detail": d} for c, d in self.rule_failures + self.defects],
        }


def _decodable(ts: str) -> bool:
    try:
        return bool(get_decoder(ts).is_available)
    except (NotImplementedError, ValueError):
        return False


def _rule_failures(series: SeriesHeaders, cfg: CtDicomConfig) -> list[tuple[str, str]]:
    rules = cfg.selection
    first = series.first
    if not first.is_image:
        return [(R.RULE_NOT_IMAGE, "instances have no Rows/Columns (not an image object)")]
    out: list[tuple[str, str]] = []
    if not series.uid:
        out.append((R.RULE_NO_SERIES_UID, "instances lack SeriesInstanceUID"))
    if first.modality not in {m.upper() for m in rules.modalities}:
        out.append((R.RULE_MODALITY, f"modality {first.modality or '(none)'} not in {rules.modalities}"))
    if first.sop_class_uid not in rules.sop_classes:
        out.append((R.RULE_SOP_CLASS, f"SOP class {first.sop_class_uid} is not an accepted CT image class"))
    excluded = {v.upper() for v in rules.excluded_image_types}
    types = {v for inst in series.instances for v in inst.image_type}
    types |= {v for inst in series.instances for info in inst.frame_infos for v in info.frame_type}
    hit = sorted(types & excluded)
    if hit:
        out.append((R.RULE_IMAGE_TYPE, f"ImageType contains {'/'.join(hit)}"))
    for pattern in rules.excluded_descriptions:
        if re.search(pattern, first.description, flags=re.IGNORECASE):
            out.append((R.RULE_DESCRIPTION, f"SeriesDescription matches {pattern!r}"))
            break
    if any(inst.samples_per_pixel != 1 for inst in series.instances):
        out.append((R.RULE_SAMPLES_PER_PIXEL, "not a single-sample (greyscale) image"))
    return out


def _geometry_rules(decision: SeriesDecision, cfg: CtDicomConfig) -> None:
    rules = cfg.selection
    series = decision.series
    normal = decision.geometry.normal if decision.geometry is not None else first_normal(series.instances)
    if rules.require_axial and normal is not None:
        tilt = axial_tilt_deg(normal)
        if tilt > rules.max_tilt_deg:
            decision.rule_failures.append((R.RULE_NOT_AXIAL, f"slice normal is {tilt:.1f}° from the patient axis"))
    thickness = decision.thickness()
    lo, hi = rules.slice_thickness_mm
    if thickness != float("inf") and not lo <= thickness <= hi:
        decision.rule_failures.append((R.RULE_THICKNESS, f"slice thickness {thickness:g} mm outside [{lo:g}, {hi:g}]"))
    if series.n_frames < rules.min_slices:
        decision.rule_failures.append((R.RULE_MIN_SLICES, f"{series.n_frames} slices < {rules.min_slices}"))


def _defects(decision: SeriesDecision, cfg: CtDicomConfig) -> None:
    series = decision.series
    for ts in sorted({i.transfer_syntax for i in series.instances}):
        if not _decodable(ts):
            decision.defects.append((R.UNSUPPORTED_TRANSFER_SYNTAX, f"no installed decoder for transfer syntax {ts}"))
    for inst in series.instances:
        if inst.defects:
            decision.defects.append(inst.defects[0])
            break
    voxels = series.first.rows * series.first.cols * series.n_frames
    if voxels > cfg.max_voxels:
        decision.defects.append((R.TOO_LARGE, f"{voxels} voxels exceed the cap of {cfg.max_voxels}"))
    decision.defects.sort(key=lambda d: R.DEFECT_PRIORITY.index(d[0]) if d[0] in R.DEFECT_PRIORITY else 99)


def _rank_key(decision: SeriesDecision, cfg: CtDicomConfig, target_z: float) -> tuple[Any, ...]:
    t, n = decision.thickness(), decision.series.n_frames
    prefer = cfg.selection.prefer
    if prefer == "thinnest":
        key: tuple[float, ...] = (t, -n)
    elif prefer == "thickest":
        key = (-t if t != float("inf") else float("inf"), -n)
    elif prefer == "most_slices":
        key = (-n, t)
    else:
        key = (abs(t - target_z), -n)
    first = decision.series.first
    return (*key, first.series_number if first.series_number is not None else 1 << 30, decision.series.uid)


def evaluate(scan: StudyScan, cfg: CtDicomConfig, target_z: float) -> list[SeriesDecision]:
    """One decision per series, the winner marked ``chosen``, in the study's series order."""
    decisions = []
    for series in scan.series:
        decision = SeriesDecision(series, _rule_failures(series, cfg))
        if series.first.is_image:
            try:
                decision.geometry = build_geometry(
                    series.instances, cfg.spacing_tolerance, cfg.orientation_tolerance_deg
                )
            except GeometryDefect as exc:
                decision.defects.append((exc.reason, exc.detail))
            _geometry_rules(decision, cfg)
            _defects(decision, cfg)
        decisions.append(decision)
    eligible = sorted((d for d in decisions if d.eligible), key=lambda d: _rank_key(d, cfg, target_z))
    for i, decision in enumerate(eligible):
        decision.status = "chosen" if i == 0 else "not_preferred"
        if i > 0:
            decision.rule_failures.append(
                (R.RANK_NOT_PREFERRED, f"another series ranks first by {cfg.selection.prefer}")
            )
    return decisions


def choose(scan: StudyScan, decisions: list[SeriesDecision], cfg: CtDicomConfig, target_z: float) -> SeriesDecision:
    """The chosen series, or the ``InputError`` that best explains why there is none."""
    if scan.unreadable and cfg.reject_unreadable_files:
        reason, detail = scan.unreadable[0]
        raise InputError(reason, f"{len(scan.unreadable)} DICOM file(s) could not be read; first: {detail}")
    for decision in decisions:
        if decision.status == "chosen":
            return decision

    def codes(d: SeriesDecision) -> set[str]:
        return {c for c, _ in d.rule_failures}

    images = [d for d in decisions if R.RULE_NOT_IMAGE not in codes(d)]
    if not images:
        if scan.unreadable:
            reason, detail = scan.unreadable[0]
            raise InputError(reason, f"{len(scan.unreadable)} DICOM file(s) could not be read; first: {detail}")
        what = (
            f"{scan.files_found} file(s), {scan.skipped_files} not DICOM instances, {len(decisions)} non-image series"
        )
        raise InputError(R.NO_IMAGE_SERIES, f"no DICOM image series in the study ({what})")
    if all(R.RULE_MODALITY in codes(d) for d in images):
        found = sorted({d.series.first.modality or "(none)" for d in images})
        raise InputError(R.NOT_CT, f"image series present but none is CT (modalities: {', '.join(found)})")
    defective = sorted((d for d in images if not d.rule_failures), key=lambda d: _rank_key(d, cfg, target_z))
    if defective:
        reason, detail = defective[0].defects[0]
        if scan.unreadable:  # a slice lost to a broken file shows up as a gap; say so
            detail += f" (and {len(scan.unreadable)} unreadable DICOM file(s): {scan.unreadable[0][0]})"
        raise InputError(reason, detail)
    why = sorted({c for d in images for c in codes(d)})
    raise InputError(R.NO_SUITABLE_SERIES, f"{len(images)} image series, all skipped by rules: {', '.join(why)}")
