"""Cohort plan: every case's latent variables, labels, anatomy, lesions and note plan, sampled without I/O.

``sample_cohort`` is also the fast "metadata-only" path: it samples the whole latent model (and the
oracle scores) for thousands of cases in seconds because no pixels or text are produced.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np

from mmclinic.case import stable_hash
from mmclinic.errors import InputError
from mmclinic.synth import model as M
from mmclinic.synth.anatomy import Anatomy, Geometry, Lesion, place_lesion, sample_anatomy
from mmclinic.synth.notes import cancer_sites, plan_note_types

# Fixed stream ids so that each part of the cohort has its own independent, reproducible RNG.
_STREAM_LATENT, _STREAM_CASE, _STREAM_ORACLE, _STREAM_OBSERVED = 1, 2, 3, 6
STREAM_RENDER, STREAM_NOTES = 4, 5


@dataclass(frozen=True)
class SynthSettings:
    """Everything that determines the generated content (workers and output folder do not)."""

    cases: int = 24
    seed: int = 0
    sites: int = 2
    rows: int = 64
    cols: int = 64
    slices: int = 32
    pixel_spacing: float = 5.0
    slice_thickness: float = 5.0
    followup_fraction: float = 0.1  # fraction of patients with a second (follow-up) study

    def validate(self) -> None:
        """Raise ``InputError`` for settings the generator cannot honour."""
        checks = [
            (self.cases >= 1, "cases must be >= 1"),
            (self.seed >= 0, "seed must be >= 0"),
            (1 <= self.sites <= 99, "sites must be in 1..99"),
            (16 <= self.rows <= 1024 and 16 <= self.cols <= 1024, "rows/cols must be in 16..1024"),
            (4 <= self.slices <= 1024, "slices must be in 4..1024"),
            (0.2 <= self.pixel_spacing <= 20 and 0.2 <= self.slice_thickness <= 20, "spacing must be in 0.2..20 mm"),
            (0.0 <= self.followup_fraction <= 1.0, "followup_fraction must be in 0..1"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InputError("synth.bad_settings", msg)

    @property
    def geometry(self) -> Geometry:
        """The voxel grid of every generated series."""
        return Geometry(self.rows, self.cols, self.slices, self.pixel_spacing, self.slice_thickness)

    @property
    def cohort_key(self) -> str:
        """Short hash of the settings: entropy for UIDs, so different cohorts never share a UID."""
        return stable_hash(asdict(self))[:16]


@dataclass(frozen=True)
class CasePlan:
    """One case: identity, tabular record, note facts and plan, anatomy, lesions, labels."""

    index: int
    case_id: str
    patient_id: str
    patient_index: int
    site: str
    followup: bool
    study_date: date
    study_time: str
    record: dict[str, Any]  # raw record values (None = missing), without case_id
    findings: dict[str, str]  # note finding / distractor → state
    cancer_site: str
    note_types: tuple[str, ...]
    note_dates: tuple[date, ...]
    anatomy: Anatomy
    lesions: tuple[Lesion, ...]
    tumor_present: bool
    malignant: bool
    p_malignant: float
    p_observed: float  # E[p_malignant | what the case shows]: the Bayes-optimal score
    terms: dict[str, float]
    oracle: dict[str, float]


@dataclass
class CohortPlan:
    """All cases plus cohort-level truth (AUROCs, prevalence)."""

    settings: SynthSettings
    cases: list[CasePlan]
    summary: dict[str, Any] = field(default_factory=dict)


def case_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The RNG of one case and one purpose: independent of worker count and processing order."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


def _round(x: float, nd: int = 4) -> float:
    return float(round(float(x), nd))


def _patient_id(key: str, p: int) -> str:
    return "SP" + hashlib.sha256(f"{key}:patient:{p}".encode()).hexdigest()[:10].upper()


def _record(lat: M.Latents, i: int) -> dict[str, Any]:
    smoking = M.SMOKING[int(lat.smoking[i])]
    labs: dict[str, Any] = {}
    for j, name in enumerate(M.LAB_NAMES):
        labs[name] = None if lat.lab_missing[i, j] else float(lat.labs[i, j])
    ysq = lat.years_since_quit[i]
    return {
        "age": int(lat.age[i]),
        "sex": "M" if lat.sex[i] == 1 else "F",
        "smoking_status": smoking,
        "pack_years": float(lat.pack_years[i]),
        "years_since_quit": None if np.isnan(ysq) else int(ysq),
        "family_history": bool(lat.family[i]),
        "copd": bool(lat.copd[i]),
        **labs,
    }


def _concat(a: M.Latents, b: M.Latents) -> M.Latents:
    out: dict[str, Any] = {}
    for k, v in vars(a).items():
        out[k] = np.concatenate([v, getattr(b, k)]) if isinstance(v, np.ndarray) else v
    return M.Latents(**out)


def sample_latent_cohort(
    settings: SynthSettings, prm: M.ModelParams
) -> tuple[M.Latents, np.ndarray, np.ndarray, np.ndarray]:
    """Latents of every case in case order, plus patient index, follow-up flag and follow-up months."""
    rng = np.random.default_rng(np.random.SeedSequence([settings.seed, _STREAM_LATENT]))
    n = settings.cases
    n_pat = max(1, round(n / (1.0 + settings.followup_fraction)))
    n_fu = n - n_pat
    base = M.sample_latents(rng.standard_normal(n_pat), rng, prm)
    fu_pat = np.sort(rng.choice(n_pat, size=n_fu, replace=False)) if n_fu else np.zeros(0, dtype=np.int64)
    months = rng.integers(6, 15, size=n_fu)
    fu = M.sample_latents(base.z[fu_pat], rng, prm)
    # Patient-level attributes carry over to the follow-up study; symptoms, labs and imaging are new.
    fu.age = base.age[fu_pat] + (months >= 12)
    for name in ("sex", "smoking", "pack_years", "years_since_quit", "family", "copd"):
        setattr(fu, name, getattr(base, name)[fu_pat].copy())
    fu.notes[:, M.NOTE_FINDINGS.index("prior_cancer")] = base.notes[fu_pat, M.NOTE_FINDINGS.index("prior_cancer")]
    both = _concat(base, fu)
    patient = np.concatenate([np.arange(n_pat), fu_pat])
    is_fu = np.concatenate([np.zeros(n_pat, bool), np.ones(n_fu, bool)])
    fu_months = np.concatenate([np.zeros(n_pat, np.int64), months])
    # Case order: each patient's baseline study directly followed by its follow-up.
    order = np.lexsort((is_fu, patient))
    return both.take(order), patient[order], is_fu[order], fu_months[order]


def sample_cohort(settings: SynthSettings, prm: M.ModelParams | None = None, oracle_mc: int = 256) -> CohortPlan:
    """Sample every case's latents, labels, anatomy, lesions and note plan, plus the oracle AUROCs."""
    settings.validate()
    prm = prm or M.ModelParams()
    lat, patient, is_fu, fu_months = sample_latent_cohort(settings, prm)
    rng = np.random.default_rng(np.random.SeedSequence([settings.seed, _STREAM_LATENT, 1]))
    p = M.p_malignant(lat, prm)
    y = rng.random(p.shape) < p
    i_t, n_t, t_t = M.terms_of(lat, prm)
    oracle = M.oracle_scores(lat, prm, np.random.default_rng([settings.seed, _STREAM_ORACLE]), mc=oracle_mc)
    # Its own stream: the other outputs of a seed stay what they were before this score existed.
    observed = M.observed_scores(lat, prm, np.random.default_rng([settings.seed, _STREAM_OBSERVED]), mc=oracle_mc)
    key = settings.cohort_key
    width = max(4, len(str(settings.cases)))
    base_day = date(2016, 1, 1) + timedelta(days=settings.seed % 1461)
    geom = settings.geometry
    patient_sites: dict[int, str] = {}
    patient_dates: dict[int, date] = {}
    patient_cancer: dict[int, str] = {}
    cases: list[CasePlan] = []
    for i in range(settings.cases):
        crng = case_rng(settings.seed, _STREAM_CASE, i)
        pi = int(patient[i])
        prng = case_rng(settings.seed, _STREAM_CASE + 100, pi)  # patient-level draws
        patient_sites.setdefault(pi, f"site-{int(prng.integers(0, settings.sites)) + 1}")
        patient_dates.setdefault(pi, base_day + timedelta(days=int(prng.integers(0, 730))))
        patient_cancer.setdefault(pi, cancer_sites()[int(prng.integers(0, len(cancer_sites())))])
        study_date = patient_dates[pi] + timedelta(days=int(30.4 * fu_months[i]))
        anatomy = sample_anatomy(crng)
        lesions = []
        for k in range(int(lat.n_lesions[i])):
            d = float(lat.diameter[i, k])
            lesions.append(
                Lesion(
                    center_mm=place_lesion(anatomy, d, geom, crng),  # type: ignore[arg-type]
                    diameter_mm=d,
                    margin="spiculated" if lat.spiculated[i, k] else "smooth",
                    density="part_solid" if lat.part_solid[i, k] else "solid",
                )
            )
        note_types = tuple(plan_note_types(crng))
        offsets = {"Radiology request": (1, 8), "Pulmonology consult": (3, 45), "Primary care note": (3, 60)}
        note_dates = tuple(
            study_date - timedelta(days=int(crng.integers(*offsets.get(t, (10, 120))))) for t in note_types
        )
        findings = {f: M.NOTE_STATES[int(lat.notes[i, j])] for j, f in enumerate(M.NOTE_FINDINGS)}
        findings.update({f: M.NOTE_STATES[int(lat.distractors[i, j])] for j, f in enumerate(M.NOTE_DISTRACTORS)})
        cases.append(
            CasePlan(
                index=i,
                case_id=f"C{i + 1:0{width}d}",
                patient_id=_patient_id(key, pi),
                patient_index=pi,
                site=patient_sites[pi],
                followup=bool(is_fu[i]),
                study_date=study_date,
                study_time=f"{int(crng.integers(8, 18)):02d}{int(crng.integers(0, 60)):02d}00",
                record=_record(lat, i),
                findings=findings,
                cancer_site=patient_cancer[pi],
                note_types=note_types,
                note_dates=note_dates,
                anatomy=anatomy,
                lesions=tuple(lesions),
                tumor_present=bool(lat.tumor[i]),
                malignant=bool(y[i]),
                p_malignant=_round(p[i], 6),
                p_observed=_round(observed[i], 6),
                terms={"imaging": _round(i_t[i]), "notes": _round(n_t[i]), "tabular": _round(t_t[i])},
                oracle={k: _round(v[i], 6) for k, v in oracle.items()},
            )
        )
    summary = {
        "prevalence": _round(y.mean()),
        "tumor_rate": _round(lat.tumor.mean()),
        "occult_malignant_fraction": _round((y & ~lat.tumor).sum() / max(int(y.sum()), 1)),
        "bayes_auroc": _round(M.auroc(p, y)),
        "bayes_observed_auroc": _round(M.auroc(observed, y)),
        "oracle_auroc": {k: _round(M.auroc(v, y)) for k, v in oracle.items()},
        "patients": len(set(patient.tolist())),
        "followup_cases": int(is_fu.sum()),
    }
    return CohortPlan(settings=settings, cases=cases, summary=summary)
