"""Plain typed data shared by every part of mmclinic: Case, its modality inputs, Prediction."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

# Modality keys used in ``Case.inputs``. A modality plugin declares which key it reads.
IMAGING = "imaging"
NOTES = "notes"
TABULAR = "tabular"


@dataclass(frozen=True)
class StudyRef:
    """A CT study on disk: a folder to scan, or an explicit list of files."""

    folder: Path | None = None
    files: tuple[Path, ...] = ()


@dataclass(frozen=True)
class NoteRef:
    """One clinical note. ``data`` holds raw bytes (decoding is the notes plugin's job)."""

    data: bytes
    note_date: date | None = None
    note_type: str = "clinical_note"
    source: str = ""  # where it came from (relative path or API), never patient identifiers


@dataclass(frozen=True)
class Case:
    """One patient case as every entry point (listener, API, batch) builds it.

    ``inputs`` maps a modality key (``imaging``, ``notes``, ``tabular`` or a third-party key)
    to that modality's reference: ``StudyRef``, ``list[NoteRef]``, ``dict[str, Any]`` (one
    record row, raw values). A missing key means the modality is absent.
    ``labels`` is optional ground truth (``tumor_present``, ``malignant``) for training and
    evaluation.
    """

    case_id: str
    patient_id: str  # pseudonymous
    site: str = "default"
    inputs: dict[str, Any] = field(default_factory=dict)
    labels: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    """One detected lesion, in the source study's patient coordinate system (LPS, mm)."""

    center_mm: tuple[float, float, float]
    diameter_mm: float
    confidence: float
    malignancy_risk: float  # calibrated probability of malignancy were this the case's only lesion
    center_voxel: tuple[int, int, int] | None = None  # in the model's resampled grid
    label: str = "nodule"


@dataclass(frozen=True)
class Provenance:
    """Everything needed to say how a prediction was made and to reproduce it."""

    weights_sha256: str
    task: str
    task_version: str
    plugin_versions: dict[str, str]
    mmclinic_version: str
    preprocessing_hash: str
    input_fingerprints: dict[str, str]
    device: str
    timings_ms: dict[str, float]
    modalities_present: tuple[str, ...]


@dataclass(frozen=True)
class Prediction:
    """Result of one case under one model."""

    case_id: str
    task: str
    tumor_probability: float
    malignancy_risk: float  # calibrated probability of malignancy
    findings: tuple[Finding, ...]
    modality_contributions: dict[str, float]
    provenance: Provenance

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return json.loads(json.dumps(asdict(self)))  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Prediction:
        """Inverse of ``to_dict`` (lists back to tuples); used for journals and stored rows."""
        p = d["provenance"]
        findings = tuple(
            Finding(
                center_mm=(float(f["center_mm"][0]), float(f["center_mm"][1]), float(f["center_mm"][2])),
                diameter_mm=float(f["diameter_mm"]),
                confidence=float(f["confidence"]),
                malignancy_risk=float(f["malignancy_risk"]),
                center_voxel=None
                if f.get("center_voxel") is None
                else (int(f["center_voxel"][0]), int(f["center_voxel"][1]), int(f["center_voxel"][2])),
                label=str(f.get("label", "nodule")),
            )
            for f in d["findings"]
        )
        prov = Provenance(
            weights_sha256=p["weights_sha256"],
            task=p["task"],
            task_version=p["task_version"],
            plugin_versions=dict(p["plugin_versions"]),
            mmclinic_version=p["mmclinic_version"],
            preprocessing_hash=p["preprocessing_hash"],
            input_fingerprints=dict(p["input_fingerprints"]),
            device=p["device"],
            timings_ms=dict(p["timings_ms"]),
            modalities_present=tuple(p["modalities_present"]),
        )
        return cls(
            case_id=str(d["case_id"]),
            task=str(d["task"]),
            tumor_probability=float(d["tumor_probability"]),
            malignancy_risk=float(d["malignancy_risk"]),
            findings=findings,
            modality_contributions={str(k): float(v) for k, v in d["modality_contributions"].items()},
            provenance=prov,
        )


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, streamed."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def stable_hash(obj: Any) -> str:
    """SHA-256 of a JSON-serialisable object with sorted keys (for config hashes)."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str).encode())
