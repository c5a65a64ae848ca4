"""The latent model in metadata-only mode: AUROC targets, oracle correctness, follow-ups, lesion placement."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mmclinic.errors import InputError
from mmclinic.synth import CohortPlan, SynthSettings, sample_cohort
from mmclinic.synth import model as M
from mmclinic.synth.anatomy import inside_lung
from mmclinic.synth.model import MAX_DIAMETER_MM, MIN_DIAMETER_MM


@pytest.fixture(scope="module")
def big() -> CohortPlan:
    """2000 cases with default settings, latents only (about 2 s)."""
    return sample_cohort(SynthSettings(cases=2000, seed=11))


def _arr(plan: CohortPlan, f: object) -> np.ndarray:
    return np.array([f(c) for c in plan.cases])  # type: ignore[operator]


def test_default_cohort_meets_auroc_and_rate_targets(big: CohortPlan) -> None:
    s = big.summary
    assert 0.80 <= s["bayes_auroc"] <= 0.92
    for modality in ("imaging", "notes", "tabular"):
        assert s["oracle_auroc"][modality] <= s["bayes_auroc"] - 0.08, modality
        assert s["oracle_auroc"][modality] >= 0.6, modality  # every modality carries signal
    assert 0.20 <= s["prevalence"] <= 0.30
    assert 0.40 <= s["tumor_rate"] <= 0.50


def test_summary_auroc_is_auroc_of_p_against_sampled_labels(big: CohortPlan) -> None:
    p = _arr(big, lambda c: c.p_malignant)
    y = _arr(big, lambda c: c.malignant)
    assert big.summary["bayes_auroc"] == pytest.approx(roc_auc_score(y, p), abs=1e-4)
    assert abs(y.mean() - p.mean()) < 0.03  # labels really are Bernoulli(p)


@pytest.mark.parametrize(
    ("modality", "group"),
    [
        ("imaging", lambda c: c.tumor_present),
        ("imaging", lambda c: any(les.margin == "spiculated" for les in c.lesions)),
        ("notes", lambda c: c.findings["hemoptysis"] == "stated"),
        ("notes", lambda c: c.record["smoking_status"] == "current"),
        ("tabular", lambda c: c.record["family_history"]),
        ("tabular", lambda c: c.record["cea"] is None),
    ],
)
def test_oracle_is_a_conditional_expectation(big: CohortPlan, modality: str, group: object) -> None:
    """Tower property: within any group defined by a modality's observations, mean E[p|obs] = mean p."""
    oracle = _arr(big, lambda c: c.oracle[modality])
    p = _arr(big, lambda c: c.p_malignant)
    mask = _arr(big, group).astype(bool)
    assert mask.sum() > 100
    for m in (np.ones_like(mask), mask):
        diff = p[m] - oracle[m]
        # p - E[p|obs] has mean 0 in every such group; allow 3.5 standard errors (+ a little MC error).
        tol = 3.5 * diff.std() / np.sqrt(m.sum()) + 0.003
        assert abs(diff.mean()) < tol


def test_observed_score_integrates_out_only_the_unrecorded_cea(big: CohortPlan) -> None:
    """p_observed = p where the record has the CEA; where it lacks it, E[p | observations] (tower property)."""
    p = _arr(big, lambda c: c.p_malignant)
    obs = _arr(big, lambda c: c.p_observed)
    missing = _arr(big, lambda c: c.record["cea"] is None).astype(bool)
    assert 100 < missing.sum() < len(p) / 2
    assert np.array_equal(obs[~missing], p[~missing])
    assert np.all(obs[missing] != p[missing]) and np.all((obs > 0) & (obs < 1))
    # Within groups the observations define, the unrecorded CEA averages out: mean p - E[p|obs] = 0.
    smoker = _arr(big, lambda c: c.record["smoking_status"] != "never").astype(bool)
    for m in (missing, missing & smoker, missing & ~smoker):
        diff = p[m] - obs[m]
        assert abs(diff.mean()) < 3.5 * diff.std() / np.sqrt(m.sum()) + 0.003
    # Not knowing a value can only lose: what the record shows ranks no better than the latent truth.
    assert big.summary["bayes_observed_auroc"] <= big.summary["bayes_auroc"] + 0.002


def test_observed_score_is_p_when_nothing_is_missing() -> None:
    prm = M.ModelParams()
    lat = M.sample_latents(np.random.default_rng(1).standard_normal(50), np.random.default_rng(2), prm)
    lat.lab_missing[:] = False
    assert np.array_equal(M.observed_scores(lat, prm, np.random.default_rng(3)), M.p_malignant(lat, prm))


def test_auroc_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(0)
    score = rng.integers(0, 5, 300).astype(float)
    label = rng.random(300) < 0.3
    assert M.auroc(score, label) == pytest.approx(roc_auc_score(label, score))
    assert np.isnan(M.auroc(score, np.zeros(300, bool)))


def test_followups_share_patient_level_attributes(big: CohortPlan) -> None:
    by_patient: dict[str, list] = {}
    for c in big.cases:
        by_patient.setdefault(c.patient_id, []).append(c)
    pairs = [v for v in by_patient.values() if len(v) == 2]
    assert max(len(v) for v in by_patient.values()) == 2
    assert 0.07 <= len(pairs) / len(by_patient) <= 0.13
    for first, second in pairs:
        assert not first.followup and second.followup
        assert second.study_date > first.study_date
        assert first.site == second.site
        assert 0 <= second.record["age"] - first.record["age"] <= 1
        for key in ("sex", "smoking_status", "pack_years", "years_since_quit", "family_history", "copd"):
            assert first.record[key] == second.record[key], key
        assert first.findings["prior_cancer"] == second.findings["prior_cancer"]


def test_records_missingness_and_smoking_rules(big: CohortPlan) -> None:
    recs = [c.record for c in big.cases]
    for lab in M.LAB_NAMES:
        frac = sum(r[lab] is None for r in recs) / len(recs)
        assert 0.10 <= frac <= 0.20, lab
    for r in recs:
        assert (r["years_since_quit"] is None) == (r["smoking_status"] != "former")
        assert (r["pack_years"] == 0.0) == (r["smoking_status"] == "never")
        assert r["sex"] in ("M", "F")


def test_lesions_lie_inside_a_lung_and_match_tumor_flag(big: CohortPlan) -> None:
    geom = big.settings.geometry
    zmax = (geom.slices - 1) / 2 * geom.slice_thickness
    seen = {"smooth": 0, "spiculated": 0, "solid": 0, "part_solid": 0}
    for c in big.cases[:400]:
        assert bool(c.lesions) == c.tumor_present
        for les in c.lesions:
            assert MIN_DIAMETER_MM <= les.diameter_mm <= MAX_DIAMETER_MM
            assert inside_lung(c.anatomy, les.center_mm, les.diameter_mm / 2)
            assert abs(les.center_mm[2]) <= zmax
            seen[les.margin] += 1
            seen[les.density] += 1
    assert all(v > 10 for v in seen.values()), seen


def test_sampling_is_deterministic_and_seed_dependent() -> None:
    a = sample_cohort(SynthSettings(cases=50, seed=3))
    b = sample_cohort(SynthSettings(cases=50, seed=3))
    c = sample_cohort(SynthSettings(cases=50, seed=4))
    assert a.cases == b.cases and a.summary == b.summary
    assert [x.record for x in a.cases] != [x.record for x in c.cases]


def test_bad_settings_raise_input_error() -> None:
    with pytest.raises(InputError) as err:
        sample_cohort(SynthSettings(cases=0))
    assert err.value.reason == "synth.bad_settings"
    with pytest.raises(InputError):
        SynthSettings(pixel_spacing=-1.0).validate()


def test_lesions_stay_inside_a_small_custom_field() -> None:
    plan = sample_cohort(SynthSettings(cases=60, seed=1, rows=40, cols=40, slices=12))
    half_xy, half_z = 39 / 2 * 5.0, 11 / 2 * 5.0
    lesions = [les for c in plan.cases for les in c.lesions]
    assert lesions
    for les in lesions:
        x, y, z = les.center_mm
        assert max(abs(x), abs(y)) <= half_xy and abs(z) <= half_z
