"""Training examples: cached inputs of a labelled case with its lesion target and ground-truth lesions."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from mmclinic.case import IMAGING, Case
from mmclinic.engine.factory import ModelParts
from mmclinic.logs import event
from mmclinic.plugin_api import TaskSpec
from mmclinic.training.cache import CachedInput, CaseCache, safe_get
from mmclinic.training.data import Cohort, lesion_target
from mmclinic.training.metrics import GtLesion
from mmclinic.training.progress import progress_bar

log = logging.getLogger(__name__)


@dataclass
class Example:
    """One training case: cached inputs, labels, lesion target (imaging cases with ground truth)."""

    case_id: str
    patient_id: str
    inputs: dict[str, CachedInput]
    y: torch.Tensor  # [number of task heads], in the task's head order
    lesion: torch.Tensor | None = None
    replay: dict[str, CachedInput] = field(default_factory=dict)  # stored outputs of frozen encoders
    gt_lesions: list[GtLesion] | None = None  # None: no ground truth for this case
    assertions: torch.Tensor | None = None  # [items] state per annotated note finding (assertion head only)


def _labels(case: Case, spec: TaskSpec) -> torch.Tensor | None:
    """One target per task head (its label, else its fallback label); None when one has neither."""
    values = []
    for head in spec.heads:
        value = case.labels.get(head.label)
        if value is None and head.fallback_label is not None:
            value = case.labels.get(head.fallback_label)
        try:
            values.append(float(value))  # type: ignore[arg-type]  # None and bad text fall to except
        except (TypeError, ValueError):
            return None
    return torch.tensor(values, dtype=torch.float32)


def build_examples(
    cohort: Cohort, cache: CaseCache, parts: ModelParts, progress: bool = True
) -> tuple[list[Example], dict[str, str]]:
    """Cache every case (the expensive part, once per cohort) and attach labels + lesion targets."""
    examples: list[Example] = []
    rejected = dict(cohort.rejected)
    spec = parts.spec
    with progress_bar("caching inputs", len(cohort.cases), enabled=progress) as advance:
        for case in cohort.cases:
            advance()
            y = _labels(case, spec)
            if y is None:
                rejected[case.case_id] = "labels.missing"
                continue
            got = safe_get(cache, case)
            if not isinstance(got, dict):
                rejected[case.case_id] = got.reason
                continue
            target = None
            img = got.get(IMAGING)
            if img is not None and img.present and case.case_id in cohort.lesions:
                target = lesion_target(
                    cohort.lesions[case.case_id],
                    parts.plugins[IMAGING],
                    img.meta,
                    spec.imaging.size,
                    spec.imaging.spacing_mm,
                )
            gts = cohort.lesions.get(case.case_id)
            examples.append(Example(case.case_id, case.patient_id, got, y, target, gt_lesions=gts))
    event(log, "train.cached", cases=len(examples), rejected=len(rejected), hits=cache.hits, misses=cache.misses)
    return examples, rejected
