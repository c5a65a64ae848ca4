"""The committed sample cohort loads cleanly and is exactly what the recorded command produces."""

from __future__ import annotations

from pathlib import Path

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


def test_sample_cohort_matches_recorded_command(tmp_path: Path) -> None:
    """`mmclinic synth --cases 24 --seed 2024` (see sample_data/README.md) regenerates it byte for byte."""
    fresh = generate_cohort(SynthSettings(cases=24, seed=2024), tmp_path / "cohort")
    committed, regenerated = all_files(SAMPLE), all_files(fresh.out_dir)
    assert committed.keys() == regenerated.keys()
    differing = [k for k in committed if committed[k] != regenerated[k]]
    assert differing == [], f"{len(differing)} files differ; regenerate sample_data (see its README)"
