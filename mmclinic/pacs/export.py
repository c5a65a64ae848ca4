"""Result objects of a stored prediction: rebuild the ``Prediction``, find its source series, build SR (+ SEG)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from mmclinic.case import Prediction
from mmclinic.errors import InputError
from mmclinic.pacs.sr import ResultIds, build_sr, read_sources, task_content, to_bytes
from mmclinic.pacs.uids import result_key
from mmclinic.store.models import CaseRow, Instance, PredictionRow, Series

# Key the imaging plugin's series UID has in a prediction's input fingerprints (engine prefixes the modality).
SERIES_FP_KEYS = ("imaging:ct_series_uid", "ct_series_uid")


@dataclass(frozen=True)
class ExportObject:
    """One file to deliver: outbox name, Part 10 bytes, SOP Instance UID."""

    name: str
    data: bytes
    sop_uid: str


def prediction_from_row(row: PredictionRow) -> Prediction:
    """The ``Prediction`` a stored row holds (findings and provenance as saved)."""
    provenance = {
        "weights_sha256": row.weights_sha256,
        "task": row.task,
        "task_version": row.task_version,
        "plugin_versions": row.plugin_versions,
        "mmclinic_version": row.mmclinic_version,
        "preprocessing_hash": row.preprocessing_hash,
        "input_fingerprints": row.input_fingerprints,
        "device": row.device,
        "timings_ms": row.timings_ms,
        "modalities_present": row.modalities_present,
    }
    return Prediction.from_dict(
        {
            "case_id": "",
            "task": row.task,
            "tumor_probability": row.tumor_probability,
            "malignancy_risk": row.malignancy_risk,
            "findings": row.findings,
            "modality_contributions": row.modality_contributions,
            "provenance": provenance,
        }
    )


def source_paths(session: Session, row: PredictionRow) -> list[Path]:
    """Files of the series the prediction was made from (the chosen series, else the whole study)."""
    case = session.get(CaseRow, row.case_id)
    if case is None or case.study_id is None:
        raise InputError("pacs.no_study", "the prediction was made without a CT study; there is nothing to attach to")
    series_uid = next((str(row.input_fingerprints[k]) for k in SERIES_FP_KEYS if k in row.input_fingerprints), None)
    stmt = select(Instance.storage_path).join(Series).where(Series.study_id == case.study_id)
    if series_uid:
        stmt = stmt.where(Series.series_uid == series_uid)
    paths = [Path(p) for p in session.scalars(stmt.order_by(Instance.id))]
    if not paths:
        raise InputError("pacs.no_sources", "no stored instances of the source series")
    return paths


def result_ids(row: PredictionRow) -> ResultIds:
    """UIDs of the prediction's SR/SEG (derived, so every rebuild and retry reuses them)."""
    return ResultIds.for_key(result_key(row.id, row.input_fingerprint, row.weights_sha256), row.weights_sha256)


def sr_name(row: PredictionRow) -> str:
    """Outbox name of a prediction's SR."""
    return f"sr-{row.id}-{row.input_fingerprint[:12]}"


def build_objects(session: Session, row: PredictionRow, with_seg: bool = False) -> list[ExportObject]:
    """The SR (and, when asked and there are findings, the SEG) of a stored prediction."""
    pred = prediction_from_row(row)
    ids = result_ids(row)
    sources = read_sources(source_paths(session, row))
    # Content date = when the prediction was made, so a rebuild yields the same bytes as the first build.
    when = row.created_at.astimezone(UTC)
    sr = build_sr(pred, ids, sources, task_content(pred), when=when)
    out = [ExportObject(sr_name(row), to_bytes(sr), ids.sr_sop_uid)]
    if with_seg and pred.findings:
        from mmclinic.pacs.seg import build_seg

        seg = build_seg(pred, ids, sources_with_pixels(source_paths(session, row)))
        if seg is not None:
            out.append(ExportObject(f"seg-{row.id}-{row.input_fingerprint[:12]}", to_bytes(seg), ids.seg_sop_uid))
    return out


def sources_with_pixels(paths: list[Path]) -> list[Dataset]:
    """Full source datasets (SEG needs them to check geometry)."""
    import pydicom

    return [pydicom.dcmread(p) for p in paths]
