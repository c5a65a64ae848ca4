"""TID 1500 Comprehensive 3D SR for one prediction (highdicom), and a reader that parses its findings back."""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from mmclinic import __version__
from mmclinic.case import Prediction
from mmclinic.errors import InputError
from mmclinic.pacs.uids import derived_uid

Code3 = tuple[str, str, str]

# Fallback codes when a task plugin offers no SR mapping (same concepts the tumor-risk task uses).
_FINDING: Code3 = ("121071", "DCM", "Finding")
_NODULE: Code3 = ("27925004", "SCT", "Nodule")
_DIAMETER: Code3 = ("81827009", "SCT", "Diameter")
_PROB_CANCER: Code3 = ("111047", "DCM", "Probability of cancer")
_CERTAINTY: Code3 = ("111012", "DCM", "Certainty of Finding")
_MM: Code3 = ("mm", "UCUM", "mm")
_NO_UNITS: Code3 = ("1", "UCUM", "no units")
_NONE: Code3 = ("260413007", "SCT", "None")
# Private codes (99 prefix: allowed by PS3.16 for local concepts) to say which inputs were absent.
_ABSENT: Code3 = ("MODABSENT", "99MMCLINIC", "Input modality absent")
_MODALITY_CODES: dict[str, Code3] = {
    "imaging": ("IMAGING", "99MMCLINIC", "CT imaging"),
    "notes": ("NOTES", "99MMCLINIC", "Clinical notes"),
    "tabular": ("TABULAR", "99MMCLINIC", "Structured clinical records"),
}
SR_SERIES_NUMBER = 9901
SR_SERIES_DESCRIPTION = "mmclinic AI results"


@dataclass(frozen=True)
class ResultIds:
    """UIDs of the objects exported for one prediction; derived from its key, so stable across retries."""

    sr_series_uid: str
    sr_sop_uid: str
    seg_series_uid: str
    seg_sop_uid: str
    device_uid: str

    @classmethod
    def for_key(cls, key: str, weights_sha256: str) -> ResultIds:
        return cls(
            sr_series_uid=derived_uid("sr-series", key),
            sr_sop_uid=derived_uid("sr-instance", key),
            seg_series_uid=derived_uid("seg-series", key),
            seg_sop_uid=derived_uid("seg-instance", key),
            device_uid=derived_uid("device", weights_sha256),
        )


def _code(c: Sequence[str]) -> Any:
    from highdicom.sr import CodedConcept

    value, scheme, meaning = (str(x) for x in c)
    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning)


def default_content(pred: Prediction) -> dict[str, Any]:
    """SR content for a task without its own mapping: same shape as ``TaskPlugin.sr_content``."""
    return {
        "procedure_reported": ("77477000", "SCT", "Computed tomography"),
        "case_measurements": [
            {"concept": _PROB_CANCER, "value": round(pred.malignancy_risk, 4), "unit": _NO_UNITS},
            {"concept": _CERTAINTY, "value": round(pred.tumor_probability, 4), "unit": _NO_UNITS},
        ],
        "findings": [
            {
                "tracking_id": f"finding-{i}",
                "finding_type": (_FINDING, _NODULE),
                "center_mm": list(f.center_mm),
                "measurements": [
                    {"concept": _DIAMETER, "value": round(f.diameter_mm, 1), "unit": _MM},
                    {"concept": _PROB_CANCER, "value": round(f.malignancy_risk, 4), "unit": _NO_UNITS},
                ],
                "qualitative": [{"concept": _CERTAINTY, "value": round(f.confidence, 4), "unit": _NO_UNITS}],
            }
            for i, f in enumerate(pred.findings, start=1)
        ],
        "algorithm": {"name": f"mmclinic {pred.task}", "version": pred.provenance.task_version},
    }


def task_content(pred: Prediction) -> dict[str, Any]:
    """The task plugin's SR mapping (found through the registry), else ``default_content``."""
    from mmclinic.errors import PluginError
    from mmclinic.registry import get_registry

    try:
        task = get_registry().get("task", pred.task)
        content = task.sr_content(pred) if hasattr(task, "sr_content") else {}
    except PluginError:
        content = {}
    return content or default_content(pred)


def read_sources(paths: Sequence[Path]) -> list[Dataset]:
    """Headers of the source series (no pixels), sorted by InstanceNumber for a stable evidence list."""
    import pydicom

    out = []
    for p in paths:
        try:
            out.append(pydicom.dcmread(p, stop_before_pixels=True))
        except Exception as exc:  # a source file that vanished or rotted since it was stored
            raise InputError(
                "pacs.source_unreadable", f"source instance cannot be read ({type(exc).__name__})"
            ) from exc
    if not out:
        raise InputError("pacs.no_sources", "the prediction has no source instances to reference")
    return sorted(out, key=lambda d: (int(getattr(d, "InstanceNumber", 0) or 0), str(d.SOPInstanceUID)))


def _measurement(m: dict[str, Any]) -> Any:
    from highdicom.sr import Measurement

    return Measurement(name=_code(m["concept"]), value=float(m["value"]), unit=_code(m["unit"]))


def build_sr(
    pred: Prediction,
    ids: ResultIds,
    sources: Sequence[Dataset],
    content: dict[str, Any],
    all_modalities: Sequence[str] = ("imaging", "notes", "tabular"),
    when: datetime | None = None,
) -> Dataset:
    """The Comprehensive 3D SR: case-level group (risk, absent inputs) + one group per finding (3D point).

    ``when`` fixes content date/time (the outbox stores the built bytes, so a retry re-sends the same file).
    """
    import highdicom as hd
    from highdicom.sr import (
        AlgorithmIdentification,
        Comprehensive3DSR,
        DeviceObserverIdentifyingAttributes,
        ImageRegion3D,
        MeasurementReport,
        MeasurementsAndQualitativeEvaluations,
        ObservationContext,
        ObserverContext,
        PlanarROIMeasurementsAndQualitativeEvaluations,
        QualitativeEvaluation,
        TrackingIdentifier,
    )
    from pydicom.sr.codedict import codes

    src = sources[0]
    frame_uid = str(getattr(src, "FrameOfReferenceUID", "") or "")
    if pred.findings and not frame_uid:
        raise InputError("pacs.no_frame_of_reference", "source series has no FrameOfReferenceUID for 3D locations")
    algo_info = content.get("algorithm", {})
    algorithm = AlgorithmIdentification(
        name=str(algo_info.get("name", f"mmclinic {pred.task}"))[:64],
        version=str(algo_info.get("version", pred.provenance.task_version))[:64],
        parameters=[f"weights_sha256={pred.provenance.weights_sha256}"],
    )
    observer = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=DeviceObserverIdentifyingAttributes(
            uid=ids.device_uid, name="mmclinic", manufacturer_name="mmclinic", model_name=pred.task[:64]
        ),
    )
    # TID 1501 qualitative evaluations: "no findings" and which inputs were absent, as coded values.
    qualitative = []
    if not pred.findings:
        qualitative.append(QualitativeEvaluation(_code(_FINDING), _code(_NONE)))
    present = set(pred.provenance.modalities_present)
    for m in all_modalities:
        if m not in present:
            qualitative.append(
                QualitativeEvaluation(_code(_ABSENT), _code(_MODALITY_CODES.get(m, (m.upper()[:16], "99MMCLINIC", m))))
            )
    groups: list[Any] = [
        MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(
                uid=derived_uid("tracking", ids.sr_sop_uid, "case"), identifier="case"
            ),
            algorithm_id=algorithm,
            measurements=[_measurement(m) for m in content.get("case_measurements", [])],
            qualitative_evaluations=qualitative or None,
        )
    ]
    for g in content.get("findings", []):
        finding_type = g.get("finding_type", (_FINDING, _NODULE))[1]
        groups.append(
            PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=TrackingIdentifier(
                    uid=derived_uid("tracking", ids.sr_sop_uid, str(g["tracking_id"])), identifier=str(g["tracking_id"])
                ),
                referenced_region=ImageRegion3D(
                    graphic_type=hd.sr.GraphicTypeValues3D.POINT,
                    graphic_data=_point(g["center_mm"]),
                    frame_of_reference_uid=frame_uid,
                ),
                finding_type=_code(finding_type),
                algorithm_id=algorithm,
                measurements=[_measurement(m) for m in [*g.get("measurements", []), *g.get("qualitative", [])]],
            )
        )
    report = MeasurementReport(
        observation_context=ObservationContext(observer_device_context=observer),
        procedure_reported=_code(content.get("procedure_reported", ("77477000", "SCT", "Computed tomography"))),
        imaging_measurements=groups,
    )
    sr = Comprehensive3DSR(
        evidence=list(sources),
        content=report,
        series_instance_uid=ids.sr_series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=ids.sr_sop_uid,
        instance_number=1,
        manufacturer="mmclinic",
        manufacturer_model_name=f"mmclinic {pred.task}"[:64],
        software_versions=__version__,
        series_description=SR_SERIES_DESCRIPTION,
        is_complete=True,
        is_final=False,  # unverified machine output: a clinician has not signed it
    )
    if when is not None:
        day, clock = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
        for kw in ("Content", "InstanceCreation", "Series"):
            if kw == "Content" or f"{kw}Date" in sr:
                setattr(sr, f"{kw}Date", day)
                setattr(sr, f"{kw}Time", clock)
        for item in sr.get("ContributingEquipmentSequence", []):
            item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S")
    return sr


def _point(center: Sequence[float]) -> Any:
    import numpy as np

    if len(center) != 3:
        raise InputError("pacs.bad_finding", "a finding centre needs three coordinates")
    return np.asarray([[float(c) for c in center]], dtype=np.float32)


def to_bytes(ds: Dataset) -> bytes:
    """Part 10 bytes (preamble + file meta) of a dataset."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def read_sr_findings(ds: Dataset) -> dict[str, Any]:
    """Parse an SR written by ``build_sr``: case measurements, qualitative codes and per-finding values."""
    out: dict[str, Any] = {"case": {}, "qualitative": [], "findings": []}
    for group in _groups(ds):
        rec: dict[str, Any] = {"measurements": {}, "qualitative": []}
        for it in group.ContentSequence:
            name = str(it.ConceptNameCodeSequence[0].CodeMeaning)
            if it.ValueType == "NUM":
                rec["measurements"][name] = float(it.MeasuredValueSequence[0].NumericValue)
            elif it.ValueType == "TEXT" and name == "Tracking Identifier":
                rec["tracking_id"] = str(it.TextValue)
            elif it.ValueType == "CODE":
                rec["qualitative"].append((name, str(it.ConceptCodeSequence[0].CodeMeaning)))
            elif it.ValueType == "SCOORD3D":
                rec["center_mm"] = [float(v) for v in it.GraphicData]
                rec["frame_of_reference_uid"] = str(it.ReferencedFrameOfReferenceUID)
        if rec.get("tracking_id") == "case":
            out["case"], out["qualitative"] = rec["measurements"], rec["qualitative"]
        else:
            out["findings"].append(rec)
    return out


def _groups(ds: Dataset) -> list[Dataset]:
    """Measurement Group containers under "Imaging Measurements" (TID 1500 row 6)."""
    found = []
    for item in getattr(ds, "ContentSequence", []):
        if item.ValueType == "CONTAINER" and item.ConceptNameCodeSequence[0].CodeValue == "126010":
            for g in getattr(item, "ContentSequence", []):
                if g.ValueType == "CONTAINER" and g.ConceptNameCodeSequence[0].CodeValue == "125007":
                    found.append(g)
    return found
