"""Latent generative model of the synthetic cohort: patient risk → three modalities → malignancy, plus oracles.

One latent patient risk ``z ~ N(0, 1)`` shifts the tabular values, the note content and the lesion
properties (so the modalities are correlated, as in real data), while the malignancy logit is a sum of
three terms, each computed from one modality's *observed* variables only::

    logit p = bias + image_term(lesions) + notes_term(symptom / history statements) + tabular_term(record)

The label is ``malignant ~ Bernoulli(p)``. Because every term is a function of observed variables, ``p``
is the Bayes-optimal score; the oracle of one modality is ``E[p | that modality's observations]``, computed
by quadrature over ``z`` (exact likelihoods) and Monte Carlo over the other modalities given ``z``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy.special import expit, log_softmax, logsumexp
from scipy.stats import rankdata

F = NDArray[np.float64]
I = NDArray[np.int64]  # noqa: E741
B = NDArray[np.bool_]

SMOKING = ("never", "former", "current")
# Statements whose state enters the malignancy logit (prior cancer is mentioned only in notes).
NOTE_FINDINGS = ("hemoptysis", "weight_loss", "night_sweats", "prior_cancer")
# Statements that appear in notes but carry no malignancy signal (realistic distractors).
NOTE_DISTRACTORS = ("cough", "dyspnea", "chest_pain", "fever")
NOTE_STATES = ("unmentioned", "negated", "hedged", "stated")
LAB_NAMES = ("cea", "crp", "hemoglobin", "wbc")
MAX_LESIONS = 3
MIN_DIAMETER_MM = 4.0
MAX_DIAMETER_MM = 30.0


@dataclass(frozen=True)
class ModelParams:
    """Coefficients of the generative model (recorded in ground_truth.json)."""

    bias: float = -2.5
    # imaging: presence, lesion count, size (logit-normal in [4, 30] mm), margin, density
    tumor_logit: float = -0.2
    tumor_z: float = 0.35
    lesion_count_p: tuple[float, float, float] = (0.8, 0.15, 0.05)
    size_mu: float = -0.5
    size_z: float = 0.3
    size_sd: float = 1.0
    spic_logit: float = -1.0
    spic_z: float = 0.4
    ps_logit: float = -1.3
    ps_z: float = 0.3
    no_tumor_term: float = -1.6
    w_size: float = 0.72  # per 8 mm of diameter above 12 mm
    w_spic: float = 0.72
    w_ps: float = 0.55
    # notes: per finding, logits of (negated, hedged, stated) vs unmentioned, and their z slopes
    note_logits: tuple[float, float, float] = (0.3, -1.1, -0.9)
    note_z: tuple[float, float, float] = (0.0, 0.5, 0.8)
    note_weights: tuple[float, float, float, float] = (1.35, 1.2, 0.7, 1.25)
    hedge_factor: float = 0.45
    # tabular
    age_mean: float = 62.0
    age_z: float = 3.0
    age_sd: float = 9.0
    smoke_logits: tuple[float, float, float] = (0.0, 0.05, -0.35)
    smoke_z: tuple[float, float, float] = (0.0, 0.6, 0.9)
    pack_log_mu: float = 3.0
    pack_z: float = 0.25
    pack_sd: float = 0.5
    family_logit: float = -1.8
    family_z: float = 0.4
    cea_log_mu: float = 0.75
    cea_smoke: tuple[float, float, float] = (0.0, 0.2, 0.35)
    cea_z: float = 0.15
    cea_sd: float = 0.45
    w_age: float = 0.045  # per year above 62
    w_pack: float = 0.027  # per pack-year above 12
    w_cea: float = 1.0  # per unit of log(CEA / 2.2)
    w_family: float = 0.9
    lab_missing: float = 0.15


@dataclass
class Latents:
    """All sampled variables of ``n`` cases (arrays of length ``n``; lesion arrays are ``[n, 3]``)."""

    z: F
    age: F
    sex: I  # 0 = F, 1 = M
    smoking: I
    pack_years: F
    years_since_quit: F  # nan unless former smoker
    family: B
    copd: B
    labs: F  # [n, 4] true values in LAB_NAMES order
    lab_missing: B  # [n, 4]
    notes: I  # [n, 4] state index per NOTE_FINDINGS
    distractors: I  # [n, 4] state index per NOTE_DISTRACTORS
    tumor: B
    n_lesions: I
    diameter: F  # [n, 3], valid where slot < n_lesions
    spiculated: B
    part_solid: B
    extra: dict[str, Any] = field(default_factory=dict)

    def take(self, idx: NDArray[np.int64]) -> Latents:
        """The cases ``idx`` (in that order)."""
        picked: dict[str, Any] = {k: (v[idx] if isinstance(v, np.ndarray) else v) for k, v in vars(self).items()}
        return Latents(**picked)


# ----------------------------------------------------------------------------------------------- sampling


def sample_tabular(z: F, rng: np.random.Generator, prm: ModelParams) -> dict[str, Any]:
    """Demographics, smoking history and labs given ``z`` (vectorised)."""
    n = z.shape[0]
    age = np.round(prm.age_mean + prm.age_z * z + prm.age_sd * rng.standard_normal(n)).clip(25, 95)
    sex = rng.integers(0, 2, n)
    smoking = _categorical(_smoking_logp(z, prm), rng)
    pack = np.where(smoking > 0, np.round(np.exp(_pack_mu(z, prm) + prm.pack_sd * rng.standard_normal(n)), 1), 0.0)
    ysq = np.where(smoking == 1, rng.integers(1, 31, n).astype(float), np.nan)
    family = rng.random(n) < expit(prm.family_logit + prm.family_z * z)
    copd = rng.random(n) < np.array([0.04, 0.18, 0.25])[smoking]
    cea = sample_cea(z, smoking, rng, prm)
    crp = np.round(np.exp(np.log(4.0) + 0.8 * rng.standard_normal(n)), 1)
    hgb = np.round(np.where(sex == 1, 14.4, 12.9) + 1.1 * rng.standard_normal(n), 1)
    wbc = np.round(np.exp(np.log(7.0) + 0.25 * rng.standard_normal(n)), 1)
    labs = np.stack([cea, crp, hgb, wbc], axis=1)
    return {
        "age": age,
        "sex": sex,
        "smoking": smoking,
        "pack_years": pack,
        "years_since_quit": ysq,
        "family": family,
        "copd": copd,
        "labs": labs,
    }


def sample_cea(z: F, smoking: I, rng: np.random.Generator, prm: ModelParams) -> F:
    """CEA (ng/mL), rounded as a lab reports it; broadcasts ``z`` against ``smoking``."""
    mu = _cea_mu(z, smoking, prm)
    return np.maximum(np.round(np.exp(mu + prm.cea_sd * rng.standard_normal(mu.shape)), 1), 0.1)


def sample_notes(z: F, rng: np.random.Generator, prm: ModelParams) -> tuple[I, I]:
    """Statement state of each informative finding and each distractor."""
    n = z.shape[0]
    states = np.stack([_categorical(_note_logp(z, prm), rng) for _ in NOTE_FINDINGS], axis=1)
    # Distractors do not depend on z: common complaints whose presence says nothing about malignancy.
    distractor_p = np.array([0.3, 0.3, 0.2, 0.2])
    distractors = np.stack([rng.choice(4, size=n, p=distractor_p) for _ in NOTE_DISTRACTORS], axis=1)
    return states, distractors


def sample_imaging(z: F, rng: np.random.Generator, prm: ModelParams) -> dict[str, Any]:
    """Tumor presence, lesion count and per-lesion size / margin / density."""
    n = z.shape[0]
    tumor = rng.random(n) < expit(prm.tumor_logit + prm.tumor_z * z)
    count = np.where(tumor, 1 + rng.choice(3, size=n, p=np.array(prm.lesion_count_p)), 0)
    u = prm.size_mu + prm.size_z * z[:, None] + prm.size_sd * rng.standard_normal((n, MAX_LESIONS))
    diameter = np.round(MIN_DIAMETER_MM + (MAX_DIAMETER_MM - MIN_DIAMETER_MM) * expit(u), 1)
    diameter = diameter.clip(MIN_DIAMETER_MM + 0.1, MAX_DIAMETER_MM - 0.1)
    spic = rng.random((n, MAX_LESIONS)) < expit(prm.spic_logit + prm.spic_z * z)[:, None]
    ps = rng.random((n, MAX_LESIONS)) < expit(prm.ps_logit + prm.ps_z * z)[:, None]
    valid = np.arange(MAX_LESIONS)[None, :] < count[:, None]
    return {
        "tumor": tumor,
        "n_lesions": count,
        "diameter": np.where(valid, diameter, 0.0),
        "spiculated": spic & valid,
        "part_solid": ps & valid,
    }


def sample_latents(z: F, rng: np.random.Generator, prm: ModelParams) -> Latents:
    """Every variable of ``len(z)`` independent cases."""
    tab = sample_tabular(z, rng, prm)
    notes, distractors = sample_notes(z, rng, prm)
    img = sample_imaging(z, rng, prm)
    missing = rng.random(tab["labs"].shape) < prm.lab_missing
    return Latents(z=z, **tab, lab_missing=missing, notes=notes, distractors=distractors, **img)


# ------------------------------------------------------------------------------------------------ terms


def lesion_score(diameter: F, spiculated: B, part_solid: B, prm: ModelParams) -> F:
    """One lesion's share of the malignancy logit: larger, spiculated and part-solid lesions score higher."""
    return prm.w_size * (diameter - 12.0) / 8.0 + prm.w_spic * spiculated + prm.w_ps * part_solid  # type: ignore[no-any-return]


def image_term(n_lesions: I, diameter: F, spiculated: B, part_solid: B, prm: ModelParams) -> F:
    """The most suspicious lesion decides; no lesion gives a strongly negative term."""
    score = lesion_score(diameter, spiculated, part_solid, prm)
    valid = np.arange(diameter.shape[-1]) < n_lesions[..., None]
    best = np.where(valid, score, -np.inf).max(axis=-1)
    return np.where(n_lesions > 0, best, prm.no_tumor_term)


def notes_term(states: I, prm: ModelParams) -> F:
    """Stated findings count fully, hedged ones partly, negated or unmentioned ones not at all."""
    factor = np.array([0.0, 0.0, prm.hedge_factor, 1.0])[states]
    return (factor * np.array(prm.note_weights)).sum(axis=-1)  # type: ignore[no-any-return]


def tabular_term(age: F, pack_years: F, cea: F, family: B, prm: ModelParams) -> F:
    """Older age, heavier smoking, higher CEA and a family history raise the risk."""
    return (
        prm.w_age * (age - 62.0)
        + prm.w_pack * (pack_years - 12.0)
        + prm.w_cea * np.log(cea / 2.2)
        + prm.w_family * family
    )


def terms_of(lat: Latents, prm: ModelParams) -> tuple[F, F, F]:
    """(image, notes, tabular) logit terms of every case."""
    return (
        image_term(lat.n_lesions, lat.diameter, lat.spiculated, lat.part_solid, prm),
        notes_term(lat.notes, prm),
        tabular_term(lat.age, lat.pack_years, lat.labs[:, 0], lat.family, prm),
    )


def p_malignant(lat: Latents, prm: ModelParams) -> F:
    """The true malignancy probability of every case."""
    i, n, t = terms_of(lat, prm)
    return expit(prm.bias + i + n + t)  # type: ignore[no-any-return]


# ---------------------------------------------------------------------------------------- likelihoods


def _categorical(logp: F, rng: np.random.Generator) -> I:
    """One draw per row of ``logp`` [n, k] (log-probabilities)."""
    cum = np.exp(logp).cumsum(axis=-1)
    draws: I = (rng.random(logp.shape[:-1])[..., None] > cum[..., :-1]).sum(axis=-1)
    return draws.astype(np.int64)


def _smoking_logp(z: F, prm: ModelParams) -> F:
    return log_softmax(np.array(prm.smoke_logits) + np.multiply.outer(z, np.array(prm.smoke_z)), axis=-1)  # type: ignore[no-any-return]


def _note_logp(z: F, prm: ModelParams) -> F:
    logits = np.array((0.0, *prm.note_logits)) + np.multiply.outer(z, np.array((0.0, *prm.note_z)))
    return log_softmax(logits, axis=-1)  # type: ignore[no-any-return]


def _pack_mu(z: F, prm: ModelParams) -> F:
    return prm.pack_log_mu + prm.pack_z * z


def _cea_mu(z: F, smoking: I, prm: ModelParams) -> F:
    return prm.cea_log_mu + np.array(prm.cea_smoke)[smoking] + prm.cea_z * z


def _norm_ll(x: F, mu: F, sd: float) -> F:
    return -0.5 * ((x - mu) / sd) ** 2  # constants cancel in the posterior over z


def _bern_ll(x: B, logit: F) -> F:
    return np.where(x, -np.logaddexp(0.0, -logit), -np.logaddexp(0.0, logit))


def loglik_imaging(zg: F, lat: Latents, prm: ModelParams) -> F:
    """log p(imaging observations | z) on the grid ``zg`` → [n, G]."""
    z = zg[None, :]
    ll = _bern_ll(lat.tumor[:, None], prm.tumor_logit + prm.tumor_z * z)
    lo, hi = MIN_DIAMETER_MM, MAX_DIAMETER_MM
    for k in range(MAX_LESIONS):
        valid = (k < lat.n_lesions)[:, None]
        frac = ((lat.diameter[:, k] - lo) / (hi - lo)).clip(1e-6, 1 - 1e-6)
        u = np.log(frac / (1 - frac))[:, None]  # the Jacobian does not depend on z, so it cancels
        per = (
            _norm_ll(u, prm.size_mu + prm.size_z * z, prm.size_sd)
            + _bern_ll(lat.spiculated[:, k, None], prm.spic_logit + prm.spic_z * z)
            + _bern_ll(lat.part_solid[:, k, None], prm.ps_logit + prm.ps_z * z)
        )
        ll = ll + np.where(valid, per, 0.0)
    return ll


def loglik_notes(zg: F, lat: Latents, prm: ModelParams) -> F:
    """log p(note observations | z): finding states, and age and smoking status (notes mention them)."""
    logp = _note_logp(zg, prm)  # [G, 4]
    ll = logp[:, lat.notes].sum(axis=-1).T  # [n, G]
    return ll + _demographics_ll(zg, lat, prm)  # type: ignore[no-any-return]


def loglik_tabular(zg: F, lat: Latents, prm: ModelParams) -> F:
    """log p(record | z): age, smoking, pack-years, family history and CEA when it was measured."""
    z = zg[None, :]
    ll = _demographics_ll(zg, lat, prm)
    smoker = (lat.smoking > 0)[:, None]
    logpack = np.log(np.maximum(lat.pack_years, 0.1))[:, None]
    ll = ll + np.where(smoker, _norm_ll(logpack, _pack_mu(z, prm), prm.pack_sd), 0.0)
    ll = ll + _bern_ll(lat.family[:, None], prm.family_logit + prm.family_z * z)
    logcea = np.log(lat.labs[:, 0])[:, None]
    cea_ll = _norm_ll(logcea, _cea_mu(z, lat.smoking[:, None], prm), prm.cea_sd)
    return ll + np.where(lat.lab_missing[:, 0, None], 0.0, cea_ll)


def _demographics_ll(zg: F, lat: Latents, prm: ModelParams) -> F:
    z = zg[None, :]
    ll = _norm_ll(lat.age[:, None], prm.age_mean + prm.age_z * z, prm.age_sd)
    return ll + _smoking_logp(zg, prm)[:, lat.smoking].T


# -------------------------------------------------------------------------------------------- oracles

Z_GRID = np.linspace(-4.0, 4.0, 33)


def _posterior(ll: F) -> F:
    logw = ll - 0.5 * Z_GRID[None, :] ** 2
    return np.exp(logw - logsumexp(logw, axis=1, keepdims=True))  # type: ignore[no-any-return]


def oracle_scores(lat: Latents, prm: ModelParams, rng: np.random.Generator, mc: int = 256) -> dict[str, F]:
    """``E[p | one modality's observations]`` for imaging, notes and tabular, per case."""
    i_term, n_term, _ = terms_of(lat, prm)
    n = lat.z.shape[0]
    post = {
        "imaging": _posterior(loglik_imaging(Z_GRID, lat, prm)),
        "notes": _posterior(loglik_notes(Z_GRID, lat, prm)),
        "tabular": _posterior(loglik_tabular(Z_GRID, lat, prm)),
    }
    cond = {k: np.zeros((n, Z_GRID.size)) for k in post}
    for g, zg in enumerate(Z_GRID):
        pool = sample_latents(np.full(mc, zg), rng, prm)
        pi, pn, pt = terms_of(pool, prm)
        # imaging observed: the other two modalities come from the pool drawn at this z
        cond["imaging"][:, g] = expit(prm.bias + i_term[:, None] + (pn + pt)[None, :]).mean(axis=1)
        # notes observed (incl. age and smoking status): draw the rest of the record given them and z
        pack = np.where(
            lat.smoking[:, None] > 0,
            np.round(np.exp(_pack_mu(np.full(1, zg), prm) + prm.pack_sd * rng.standard_normal((n, mc))), 1),
            0.0,
        )
        fam = rng.random((n, mc)) < expit(prm.family_logit + prm.family_z * zg)
        cea = sample_cea(np.full((n, mc), zg), np.broadcast_to(lat.smoking[:, None], (n, mc)), rng, prm)
        t_rest = tabular_term(lat.age[:, None], pack, cea, fam, prm)
        cond["notes"][:, g] = expit(prm.bias + n_term[:, None] + t_rest + pi[None, :]).mean(axis=1)
        # tabular observed: an unmeasured CEA is drawn given smoking status and z
        cea_t = np.where(
            lat.lab_missing[:, 0, None],
            sample_cea(np.full((n, mc), zg), np.broadcast_to(lat.smoking[:, None], (n, mc)), rng, prm),
            lat.labs[:, 0, None],
        )
        t_obs = tabular_term(lat.age[:, None], lat.pack_years[:, None], cea_t, lat.family[:, None], prm)
        cond["tabular"][:, g] = expit(prm.bias + t_obs + (pi + pn)[None, :]).mean(axis=1)
    return {k: (post[k] * cond[k]).sum(axis=1) for k in post}


def observed_scores(lat: Latents, prm: ModelParams, rng: np.random.Generator, mc: int = 256) -> F:
    """``E[p | every observation of the case]``: the Bayes-optimal score, per case.

    ``p_malignant`` reads the true CEA, which the record leaves out for a case whose lab is missing;
    no model sees that value, so AUROC of ``p`` overstates what any model can reach. Where the CEA is
    missing it is integrated out here: over ``z`` given all three modalities' observations (quadrature)
    and over the CEA given ``z`` and the smoking status (Monte Carlo). Elsewhere the score is ``p``.
    """
    i_term, n_term, _ = terms_of(lat, prm)
    p = p_malignant(lat, prm)
    miss = np.flatnonzero(lat.lab_missing[:, 0])
    if miss.size == 0:
        return p
    sub = lat.take(miss)
    # Notes states only: the notes' mention of age and smoking is the record's, counted in loglik_tabular.
    states_ll = _note_logp(Z_GRID, prm)[:, sub.notes].sum(axis=-1).T
    post = _posterior(loglik_imaging(Z_GRID, sub, prm) + states_ll + loglik_tabular(Z_GRID, sub, prm))
    n = miss.size
    smoking = np.broadcast_to(sub.smoking[:, None], (n, mc))
    cond = np.zeros((n, Z_GRID.size))
    for g, zg in enumerate(Z_GRID):
        cea = sample_cea(np.full((n, mc), zg), smoking, rng, prm)
        t = tabular_term(sub.age[:, None], sub.pack_years[:, None], cea, sub.family[:, None], prm)
        cond[:, g] = expit(prm.bias + (i_term[miss] + n_term[miss])[:, None] + t).mean(axis=1)
    out = p.copy()
    out[miss] = (post * cond).sum(axis=1)
    return out


def auroc(score: F, label: B) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half); nan when one class is absent."""
    pos = int(label.sum())
    neg = int(label.size - pos)
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[label].sum() - pos * (pos + 1) / 2) / (pos * neg))


def params_dict(prm: ModelParams) -> dict[str, Any]:
    """JSON-ready coefficients."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(prm).items()}
