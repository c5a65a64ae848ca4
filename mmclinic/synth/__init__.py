"""Synthetic multimodal cohort generator: CT DICOM + clinical notes + tabular records + ground truth."""

from mmclinic.cohort import MANIFEST_COLUMNS
from mmclinic.synth.plan import CasePlan, CohortPlan, SynthSettings, sample_cohort
from mmclinic.synth.writer import RECORD_COLUMNS, SynthResult, generate_cohort

__all__ = [
    "MANIFEST_COLUMNS",
    "RECORD_COLUMNS",
    "CasePlan",
    "CohortPlan",
    "SynthResult",
    "SynthSettings",
    "generate_cohort",
    "sample_cohort",
]
