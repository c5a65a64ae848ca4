"""TaskPlugin ``tumor-risk``: spec (modalities, schema, CT geometry), bundled weights, model card, SR content."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any, ClassVar

from mmclinic.case import IMAGING, NOTES, TABULAR, Prediction
from mmclinic.plugin_api import HeadSpec, ImagingSpec, TaskPlugin, TaskSpec
from mmclinic_tumor_risk.schema import TABULAR_SCHEMA

Code = tuple[str, str, str]  # (value, scheme designator, meaning)

# Codes verified against pydicom's SR concept dictionary (CIDs noted where they come from).
NODULE: Code = ("27925004", "SCT", "Nodule")  # CID 6102/6104
LUNG: Code = ("39607008", "SCT", "Lung")
FINDING: Code = ("121071", "DCM", "Finding")
FINDING_SITE: Code = ("363698007", "SCT", "Finding Site")
DIAMETER: Code = ("81827009", "SCT", "Diameter")
CENTER: Code = ("111010", "DCM", "Center")
PROBABILITY_OF_CANCER: Code = ("111047", "DCM", "Probability of cancer")  # CID 6048
CERTAINTY_OF_FINDING: Code = ("111012", "DCM", "Certainty of Finding")  # CID 6048
TRACKING_ID: Code = ("112039", "DCM", "Tracking Identifier")
MM: Code = ("mm", "UCUM", "mm")
PROBABILITY_UNIT: Code = ("1", "UCUM", "no units")

_DATA = files("mmclinic_tumor_risk") / "data"


class TumorRiskPlugin(TaskPlugin):
    """Lung tumor detection + case-level malignancy risk from CT, clinical notes and records.

    Every modality is optional, but a case needs at least one (the engine rejects an empty case
    with ``case.no_modalities``): the model is trained with modality dropout so a case without
    notes or records still gets a sound risk. Findings (location, size) need the CT.
    """

    name: ClassVar[str] = "tumor-risk"
    version: ClassVar[str] = "0.1.0"

    def spec(self) -> TaskSpec:
        """Modalities, labels, heads, imaging geometry (5 mm, 64×64×32, lung window) and record schema."""
        return TaskSpec(
            name=self.name,
            required_modalities=(),
            optional_modalities=(IMAGING, NOTES, TABULAR),
            labels=("tumor_present", "malignant"),
            imaging=ImagingSpec(spacing_mm=(5.0, 5.0, 5.0), size=(64, 64, 32), hu_window=(-1000.0, 400.0)),
            tabular_schema=TABULAR_SCHEMA,
            max_text_tokens=8,
            # In this order in the bundled checkpoint's logits. A case labelled only "malignant"
            # (a positive implies a tumor) trains the presence head on that value.
            heads=(
                HeadSpec("tumor_present", label="tumor_present", role="presence", fallback_label="malignant"),
                HeadSpec("malignant", label="malignant", role="risk"),
            ),
        )

    def weights_path(self) -> Path | None:
        """Bundled checkpoint (trained on a synthetic cohort; see the model card)."""
        p = Path(str(_DATA / "model.pt"))
        return p if p.is_file() else None

    def model_card_path(self) -> Path | None:
        """Bundled model card."""
        p = Path(str(_DATA / "MODEL_CARD.md"))
        return p if p.is_file() else None

    def sr_content(self, prediction: Prediction) -> dict[str, Any]:
        """Coded content for a TID 1500-style measurement report: one group per finding + the case risk."""
        groups = []
        for i, f in enumerate(prediction.findings, start=1):
            groups.append(
                {
                    "tracking_id": f"finding-{i}",
                    "tracking_id_code": TRACKING_ID,
                    "finding_type": (FINDING, NODULE),
                    "finding_site": (FINDING_SITE, LUNG),
                    "center_mm": list(f.center_mm),
                    "center_code": CENTER,
                    "center_voxel": list(f.center_voxel) if f.center_voxel is not None else None,
                    "measurements": [
                        {"concept": DIAMETER, "value": round(f.diameter_mm, 1), "unit": MM},
                        {
                            "concept": PROBABILITY_OF_CANCER,
                            "value": round(f.malignancy_risk, 4),
                            "unit": PROBABILITY_UNIT,
                        },
                    ],
                    "qualitative": [
                        {"concept": CERTAINTY_OF_FINDING, "value": round(f.confidence, 4), "unit": PROBABILITY_UNIT}
                    ],
                }
            )
        return {
            "title": ("126000", "DCM", "Imaging Measurement Report"),
            "procedure_reported": ("77477000", "SCT", "Computed tomography"),
            "finding_site": (FINDING_SITE, LUNG),
            "case_measurements": [
                {
                    "concept": PROBABILITY_OF_CANCER,
                    "value": round(prediction.malignancy_risk, 4),
                    "unit": PROBABILITY_UNIT,
                },
                {
                    "concept": CERTAINTY_OF_FINDING,
                    "value": round(prediction.tumor_probability, 4),
                    "unit": PROBABILITY_UNIT,
                },
            ],
            "findings": groups,
            "algorithm": {
                "name": f"mmclinic {prediction.task}",
                "version": prediction.provenance.task_version,
                "weights_sha256": prediction.provenance.weights_sha256,
            },
        }
