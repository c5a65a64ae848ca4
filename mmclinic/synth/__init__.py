"""Synthetic multimodal cohort generator: CT DICOM + clinical notes + tabular records + ground truth."""

from mmclinic.synth.plan import CasePlan, CohortPlan, SynthSettings, sample_cohort
from mmclinic.synth.writer import LABEL_COLUMNS, MANIFEST_COLUMNS, RECORD_COLUMNS, SynthResult, generate_cohort

__all__ = [
    "LABEL_COLUMNS",
    "MANIFEST_COLUMNS",
    "RECORD_COLUMNS",
    "CasePlan",
    "CohortPlan",
    "SynthResult",
    "SynthSettings",
    "generate_cohort",
    "sample_cohort",
]
