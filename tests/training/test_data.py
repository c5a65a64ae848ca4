"""Patient-level split and lesion targets mapped from patient mm into the model grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from toy_plugins import AFFINE, GRID, SPACING, ToyImaging

from mmclinic.case import Case
from mmclinic.training.data import lesion_target, lesions_from_ground_truth, patient_split
from mmclinic.training.metrics import GtLesion


def test_patient_split_keeps_patients_together_and_is_stable() -> None:
    cases = [Case(f"c{i}", f"p{i // 3}") for i in range(300)]
    train, val = patient_split(cases, 0.2, seed=5)
    assert len(train) + len(val) == 300
    assert not {c.patient_id for c in train} & {c.patient_id for c in val}
    assert 0.1 < len(val) / 300 < 0.3
    # A patient's side does not depend on which other cases exist.
    _, val2 = patient_split(cases[:150], 0.2, seed=5)
    assert {c.case_id for c in val2} == {c.case_id for c in val if int(c.case_id[1:]) < 150}
    assert patient_split(cases, 0.2, seed=6)[1] != val


def test_lesion_target_ball_at_mapped_voxel() -> None:
    ijk = (5, 2, 1)
    centre = tuple(float(v) for v in (AFFINE @ np.array([*ijk, 1.0]))[:3])
    t = lesion_target([GtLesion(centre, 12.0)], ToyImaging(), {"affine": AFFINE.tolist()}, GRID, SPACING)  # type: ignore[arg-type]
    assert t.shape == (1, *GRID) and t.dtype == torch.float32
    assert t[0, 5, 2, 1] == 1.0
    assert int(t.sum()) == 7  # 12 mm ball at 5 mm spacing: centre + 6 face neighbours
    empty = lesion_target([], ToyImaging(), {"affine": AFFINE.tolist()}, GRID, SPACING)
    assert empty.sum() == 0


def test_ground_truth_document_parsing() -> None:
    gt = {
        "cases": {
            "C1": {"lesions": [{"center_mm": [1, 2, 3], "diameter_mm": 8.5, "margin": "smooth"}]},
            "C2": {"lesions": []},
        }
    }
    les = lesions_from_ground_truth(gt)
    assert les["C1"] == [GtLesion((1.0, 2.0, 3.0), 8.5)] and les["C2"] == []


def test_warm_cache_then_every_input_is_a_hit(tmp_path: Path) -> None:
    from toy_plugins import toy_cohort, toy_registry

    from mmclinic.training.cache import warm_cache

    cohort = toy_cohort(6, seed=2)
    first = warm_cache(cohort, tmp_path, task="toy-task", progress=False, registry=toy_registry())
    assert first == {"cases": 6, "rejected": 0, "hits": 0, "misses": 12}
    again = warm_cache(cohort, tmp_path, task="toy-task", progress=False, registry=toy_registry())
    assert again["hits"] == 12 and again["misses"] == 0
