"""Synthetic clinical note text: realistic sections around a small set of stated / hedged / negated findings.

Only the finding states (and age, sex, smoking status, which notes mention) carry information; the rest
is filler drawn independently of the patient's risk so that the notes oracle of the generator stays exact.
Notes never mention lab values, pack-years, family history or the CT result (those belong to other
modalities).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np

NOTE_TYPES = ("Pulmonology consult", "Primary care note", "Radiology request", "Discharge summary")

_PHRASES: dict[str, dict[str, tuple[str, ...]]] = {
    "hemoptysis": {
        "stated": ("reports hemoptysis", "has been coughing up blood-streaked sputum", "complains of hemoptysis"),
        "hedged": ("possible hemoptysis", "questionable blood-tinged sputum", "may have had an episode of hemoptysis"),
        "negated": ("denies hemoptysis", "no hemoptysis", "has not coughed up any blood"),
    },
    "weight_loss": {
        "stated": (
            "reports unintentional weight loss",
            "has lost weight without trying",
            "notes significant weight loss",
        ),
        "hedged": ("possible weight loss", "may have lost some weight", "questionable recent weight loss"),
        "negated": ("no weight loss", "denies weight loss", "weight has been stable"),
    },
    "night_sweats": {
        "stated": ("reports drenching night sweats", "complains of night sweats", "has night sweats most nights"),
        "hedged": ("possible night sweats", "may have night sweats", "unclear whether the night sweats are new"),
        "negated": ("denies night sweats", "no night sweats", "no fevers or night sweats"),
    },
    "prior_cancer": {
        "stated": (
            "has a history of treated {cancer} cancer",
            "past medical history is notable for {cancer} cancer, treated",
            "prior malignancy: {cancer} cancer",
        ),
        "hedged": (
            "possible prior malignancy, outside records unavailable",
            "may have been treated for a cancer in the past, details unclear",
            "questionable history of {cancer} cancer",
        ),
        "negated": ("no prior history of malignancy", "denies any personal history of cancer", "no history of cancer"),
    },
    "cough": {
        "stated": ("has a persistent cough",),
        "hedged": ("possible chronic cough",),
        "negated": ("denies cough",),
    },
    "dyspnea": {
        "stated": ("reports shortness of breath on exertion",),
        "hedged": ("may be more short of breath than usual",),
        "negated": ("no shortness of breath",),
    },
    "chest_pain": {
        "stated": ("describes intermittent chest pain",),
        "hedged": ("possible atypical chest discomfort",),
        "negated": ("denies chest pain",),
    },
    "fever": {
        "stated": ("reports low-grade fevers",),
        "hedged": ("possible fevers at home",),
        "negated": ("no fevers",),
    },
}
_CANCERS = ("breast", "colon", "prostate", "bladder", "head and neck", "renal cell")
_MEDS = (
    "lisinopril 10 mg daily",
    "atorvastatin 20 mg nightly",
    "metformin 500 mg twice daily",
    "amlodipine 5 mg daily",
    "omeprazole 20 mg daily",
    "aspirin 81 mg daily",
    "levothyroxine 50 mcg daily",
    "albuterol inhaler as needed",
    "sertraline 50 mg daily",
)
_PMH = (
    "hypertension",
    "hyperlipidemia",
    "type 2 diabetes",
    "gastroesophageal reflux",
    "hypothyroidism",
    "osteoarthritis",
)
# Verb phrases ("The patient ...") and the noun phrase used in short headers.
_SMOKING = {
    "never": ("is a lifelong never smoker", "has never smoked"),
    "former": ("is a former smoker", "quit smoking in the past"),
    "current": ("is a current smoker", "continues to smoke cigarettes daily"),
}
_SMOKER_NOUN = {"never": "never smoker", "former": "former smoker", "current": "current smoker"}
_COURSE = (
    "Blood cultures remained negative throughout the stay.",
    "Home medications were continued except as noted in the reconciliation.",
    "Deep vein thrombosis prophylaxis was provided with subcutaneous heparin.",
    "Pain was controlled with acetaminophen; no opioids were required.",
    "Electrolytes were repleted as needed and renal function remained at baseline.",
    "The patient was seen by case management, who arranged transportation home.",
    "Respiratory therapy provided nebulized bronchodilators every four hours while awake.",
    "Telemetry showed normal sinus rhythm without significant arrhythmias.",
    "Blood glucose was monitored before meals and at bedtime with sliding-scale insulin coverage.",
    "A chest radiograph on admission was reviewed with the admitting team.",
    "The patient and family were updated daily and their questions were answered.",
    "Incentive spirometry was encouraged and the patient was mobilized early.",
)


@dataclass(frozen=True)
class NoteFacts:
    """What a case's notes may say."""

    age: int
    sex: str  # "M" | "F"
    smoking: str  # never | former | current
    copd: bool
    cancer_site: str  # used only when a prior cancer is mentioned
    findings: dict[str, str]  # finding → unmentioned | negated | hedged | stated (incl. distractors)
    followup: bool


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(0, len(options)))]


def _phrase(rng: np.random.Generator, finding: str, state: str, f: NoteFacts) -> str:
    return _pick(rng, _PHRASES[finding][state]).replace("{cancer}", f.cancer_site)


def cancer_sites() -> tuple[str, ...]:
    """Primary sites a prior cancer may be attributed to (drawn once per patient)."""
    return _CANCERS


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _pronoun(f: NoteFacts) -> str:
    return "He" if f.sex == "M" else "She"


def _who(f: NoteFacts) -> str:
    return f"{f.age}-year-old {'man' if f.sex == 'M' else 'woman'}"


def _statements(f: NoteFacts, rng: np.random.Generator) -> list[str]:
    """One sentence per mentioned finding, in a random order (so position carries no signal)."""
    mentioned = [(k, s) for k, s in f.findings.items() if s != "unmentioned"]
    order = rng.permutation(len(mentioned))
    subject = "The patient" if rng.random() < 0.5 else _pronoun(f)
    out = []
    for i in order:
        k, s = mentioned[int(i)]
        phrase = _phrase(rng, k, s, f)
        starts_lower = phrase.split()[0] in {"reports", "has", "complains", "denies", "describes", "may", "notes"}
        out.append(f"{subject} {phrase}." if starts_lower else f"{_cap(phrase)}.")
    return out


def _filler_history(f: NoteFacts, rng: np.random.Generator) -> str:
    pmh = [str(x) for x in rng.choice(_PMH, size=int(rng.integers(1, 4)), replace=False)]
    if f.copd:
        pmh.append("COPD")
    meds = [str(x) for x in rng.choice(_MEDS, size=int(rng.integers(2, 6)), replace=False)]
    alcohol = _pick(rng, ("drinks alcohol socially", "does not drink alcohol", "drinks one to two beers on weekends"))
    return (
        f"PAST MEDICAL HISTORY: {', '.join(pmh)}.\n"
        f"MEDICATIONS: {'; '.join(meds)}.\n"
        f"ALLERGIES: {_pick(rng, ('No known drug allergies.', 'Penicillin (rash).', 'Sulfa drugs (hives).'))}\n"
        f"SOCIAL HISTORY: The patient {_pick(rng, _SMOKING[f.smoking])}. {_pronoun(f)} {alcohol}. "
        f"Works as {_pick(rng, ('a teacher', 'a retired machinist', 'an accountant', 'a nurse', 'a farmer'))}.\n"
        "FAMILY HISTORY: Reviewed and noncontributory to today's visit.\n"
    )


def _exam(rng: np.random.Generator) -> str:
    bp = f"{int(rng.integers(110, 160))}/{int(rng.integers(65, 95))}"
    lungs = _pick(
        rng, ("clear to auscultation bilaterally", "scattered expiratory wheezes", "diminished breath sounds")
    )
    return (
        f"PHYSICAL EXAM: BP {bp}, HR {int(rng.integers(58, 102))}, RR {int(rng.integers(12, 22))}, "
        f"SpO2 {int(rng.integers(91, 100))}% on room air. General: well-appearing, in no acute distress. "
        f"HEENT: normocephalic, atraumatic, oropharynx clear. Neck: supple, no lymphadenopathy appreciated. "
        f"Lungs: {lungs}. Heart: regular rate and rhythm, no murmurs. Abdomen: soft, non-tender, "
        "non-distended. Extremities: no clubbing, cyanosis or edema. Neuro: alert and oriented, non-focal.\n"
    )


def _consult(f: NoteFacts, rng: np.random.Generator, primary: bool) -> str:
    reason = (
        "follow-up of a prior chest CT"
        if f.followup
        else _pick(
            rng,
            ("lung cancer screening discussion", "evaluation of respiratory symptoms", "abnormal chest imaging review"),
        )
    )
    hpi = " ".join(_statements(f, rng))
    intro = (
        f"The patient is a {_who(f)} referred for {reason}. "
        if not primary
        else f"{_cap(_who(f))} seen today for a routine visit and {reason}. "
    )
    plan = _pick(
        rng,
        (
            "We discussed the findings and the plan in detail; the patient agrees with CT chest and follow-up.",
            "Plan: CT chest, pulmonary function testing, and return visit in four weeks to review results.",
            "Will obtain CT of the chest and review at the multidisciplinary conference if indicated.",
        ),
    )
    return (
        f"HISTORY OF PRESENT ILLNESS: {intro}{hpi}\n"
        f"{_filler_history(f, rng)}"
        f"REVIEW OF SYSTEMS: Otherwise negative in detail except as noted in the history.\n"
        f"{_exam(rng)}"
        f"ASSESSMENT AND PLAN: {_cap(_who(f))}, {_SMOKER_NOUN[f.smoking]}. {plan} "
        "Smoking cessation counseling was offered where relevant. Vaccinations were reviewed and updated.\n"
    )


def _radiology_request(f: NoteFacts, rng: np.random.Generator) -> str:
    stated = [_phrase(rng, k, "stated", f) for k, s in f.findings.items() if s == "stated"]
    why = "; ".join(stated) if stated else _pick(rng, ("screening", "routine surveillance", "chronic symptoms"))
    exam = "CT chest without contrast, 5 mm axial reconstructions"
    prior = " Compare with prior CT." if f.followup else ""
    return f"EXAM REQUESTED: {exam}.\nCLINICAL INDICATION: {_who(f)}, {_SMOKER_NOUN[f.smoking]}; {why}.{prior}\n"


def _discharge(f: NoteFacts, rng: np.random.Generator) -> str:
    dx = _pick(rng, ("community-acquired pneumonia", "COPD exacerbation", "cellulitis of the left leg", "syncope"))
    days = int(rng.integers(2, 7))
    course = (
        f"HOSPITAL COURSE: The patient was admitted with {dx} and treated according to institutional protocols. "
        f"Antibiotics and supportive care were given as appropriate, with steady improvement over {days} days. "
        "Physical therapy evaluated the patient and recommended discharge home with outpatient follow-up. "
        "Laboratory studies were followed daily and trended toward baseline before discharge. "
        "The patient tolerated a regular diet and ambulated independently on the ward. "
        + " ".join(str(x) for x in rng.choice(_COURSE, size=int(rng.integers(4, len(_COURSE) + 1)), replace=False))
    )
    # Findings often sit late in a long discharge summary, beyond a short encoder's first window.
    ros = " ".join(_statements(f, rng))
    return (
        f"ADMISSION DIAGNOSIS: {dx}.\n"
        f"{course}\n"
        f"{_filler_history(f, rng)}"
        f"{_exam(rng)}"
        f"REVIEW OF SYSTEMS AT DISCHARGE: {ros}\n"
        f"DISCHARGE PLAN: Follow up with the primary care physician in one to two weeks. "
        f"Return precautions were reviewed, including worsening breathing, chest pain or fever.\n"
    )


def render_note(note_type: str, facts: NoteFacts, note_date: date, rng: np.random.Generator) -> str:
    """The full text of one note (header line with its type and date, then sections)."""
    if note_type == "Pulmonology consult":
        body = _consult(facts, rng, primary=False)
    elif note_type == "Primary care note":
        body = _consult(facts, rng, primary=True)
    elif note_type == "Radiology request":
        body = _radiology_request(facts, rng)
    elif note_type == "Discharge summary":
        body = _discharge(facts, rng)
    else:
        raise ValueError(f"unknown note type {note_type!r}")
    return f"{note_type.upper()}\nDate: {note_date.isoformat()}\n\n{body}"


def plan_note_types(rng: np.random.Generator) -> list[str]:
    """Which notes a case has: always a consult or primary-care note, sometimes a request and a summary."""
    types = [_pick(rng, ("Pulmonology consult", "Primary care note"))]
    if rng.random() < 0.5:
        types.append("Radiology request")
    if rng.random() < 0.3:
        types.append("Discharge summary")
    return types
