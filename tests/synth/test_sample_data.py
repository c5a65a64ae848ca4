"""The committed sample cohort loads cleanly and is exactly what the recorded command produces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from synth_helpers import all_files

from mmclinic.case import Case
from mmclinic.cohort import iter_cases, read_ground_truth
from mmclinic.synth import LABEL_COLUMNS, SynthSettings, generate_cohort

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data" / "cohort"


def test_sample_cohort_loads() -> None:
    cases = list(iter_cases(SAMPLE / "manifest.csv", labels=LABEL_COLUMNS))
    assert len(cases) == 24 and all(isinstance(c, Case) for c in cases)
    truth = read_ground_truth(SAMPLE / "ground_truth.json")
    assert truth.seed == 2024 and set(truth.cases) == {c.case_id for c in cases}  # type: ignore[union-attr]
    # The Bayes-optimal reference is E[p | what the case shows], not the p that also reads unrecorded values.
    doc = json.loads((SAMPLE / "ground_truth.json").read_text())
    assert truth.bayes_auroc == doc["bayes_observed_auroc"] != doc["bayes_auroc"]
    assert all(c.p_observed is not None and 0 < c.p_observed < 1 for c in truth.cases.values())


def test_sample_cohort_matches_recorded_command(tmp_path: Path) -> None:
    """`mmclinic synth --cases 24 --seed 2024` (see sample_data/README.md) regenerates it byte for byte."""
    fresh = generate_cohort(SynthSettings(cases=24, seed=2024), tmp_path / "cohort")
    committed, regenerated = all_files(SAMPLE), all_files(fresh.out_dir)
    assert committed.keys() == regenerated.keys()
    differing = [k for k in committed if committed[k] != regenerated[k]]
    assert differing == [], f"{len(differing)} files differ; regenerate sample_data (see its README)"


def test_lesion_alone_risks_reproduce_the_case_probability() -> None:
    """The generator's most suspicious lesion decides: the largest lesion-alone probability is the case's."""
    from mmclinic.training.data import lesion_alone_risks

    doc = json.loads((SAMPLE / "ground_truth.json").read_text())
    alone = lesion_alone_risks(doc)
    assert set(alone) == set(doc["cases"])
    multi = 0
    for cid, case in doc["cases"].items():
        assert len(alone[cid]) == len(case["lesions"])
        if case["lesions"]:
            # logit terms and diameters are stored rounded (4 decimals, 0.1 mm)
            assert max(alone[cid]) == pytest.approx(case["p_malignant"], abs=1e-3)
        multi += len(set(alone[cid])) > 1
    assert multi >= 2  # the sample holds cases whose lesions differ, so the test can see the ordering
    assert lesion_alone_risks({"cases": {}}) == {}  # not a cohort of this generator
