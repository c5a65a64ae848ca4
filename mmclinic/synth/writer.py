"""Write a planned cohort to disk: DICOM series, note files, records.csv, manifest.csv, ground_truth.json."""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmclinic import __version__
from mmclinic.cohort import INPUT_COLUMNS  # the one manifest format, written here, read there
from mmclinic.errors import InputError
from mmclinic.logs import event
from mmclinic.synth import model as M
from mmclinic.synth.anatomy import render_ct
from mmclinic.synth.dicom import SeriesInfo, write_series
from mmclinic.synth.notes import NoteFacts, render_note
from mmclinic.synth.plan import (
    STREAM_NOTES,
    STREAM_RENDER,
    CasePlan,
    CohortPlan,
    SynthSettings,
    case_rng,
    sample_cohort,
)

logger = logging.getLogger(__name__)

RECORD_COLUMNS = (
    "case_id",
    "age",
    "sex",
    "smoking_status",
    "pack_years",
    "years_since_quit",
    "family_history",
    "copd",
    "cea",
    "cea_unit",
    "crp",
    "crp_unit",
    "hemoglobin",
    "hemoglobin_unit",
    "wbc",
    "wbc_unit",
)
UNITS = {"cea": "ng/mL", "crp": "mg/L", "hemoglobin": "g/dL", "wbc": "10^9/L"}

# The generated cohort is labelled for the tumor-risk task: its two labels follow the input columns.
LABEL_COLUMNS = ("tumor_present", "malignant")
MANIFEST_COLUMNS = INPUT_COLUMNS + LABEL_COLUMNS


@dataclass(frozen=True)
class SynthResult:
    """What ``generate_cohort`` wrote and measured."""

    out_dir: Path
    plan: CohortPlan
    seconds: float
    slices_written: int


def _case_dir(case: CasePlan) -> str:
    return f"cases/{case.case_id}"


def _note_path(case: CasePlan, k: int, note_type: str) -> str:
    return f"{_case_dir(case)}/notes/note{k + 1}_{note_type.lower().replace(' ', '_')}.txt"


def _write_case(args: tuple[CasePlan, SynthSettings, str]) -> int:
    """Render and write one case (runs in a worker process); returns the number of slices written."""
    case, settings, out = args
    out_dir = Path(out)
    geom = settings.geometry
    volume = render_ct(case.anatomy, list(case.lesions), geom, case_rng(settings.seed, STREAM_RENDER, case.index))
    info = SeriesInfo(
        uid_key=f"{settings.cohort_key}:{case.case_id}",
        patient_name=f"SYNTH^{case.patient_id}",
        patient_id=case.patient_id,
        patient_sex=str(case.record["sex"]),
        patient_age=int(case.record["age"]),
        study_date=case.study_date.strftime("%Y%m%d"),
        study_time=case.study_time,
        accession=f"SYN{settings.cohort_key[:4].upper()}{case.index + 1:07d}",
        institution=f"Synthetic Hospital {case.site}",
    )
    write_series(volume, geom, info, out_dir / _case_dir(case) / "dicom")
    facts = NoteFacts(
        age=int(case.record["age"]),
        sex=str(case.record["sex"]),
        smoking=str(case.record["smoking_status"]),
        copd=bool(case.record["copd"]),
        cancer_site=case.cancer_site,
        findings=case.findings,
        followup=case.followup,
    )
    nrng = case_rng(settings.seed, STREAM_NOTES, case.index)
    for k, (note_type, note_date) in enumerate(zip(case.note_types, case.note_dates, strict=True)):
        path = out_dir / _note_path(case, k, note_type)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_note(note_type, facts, note_date, nrng), encoding="utf-8", newline="\n")
    return geom.slices


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def write_tables(plan: CohortPlan, out_dir: Path) -> None:
    """manifest.csv and records.csv (paths relative to ``out_dir``)."""
    manifest, records = [], []
    for c in plan.cases:
        manifest.append(
            {
                "case_id": c.case_id,
                "patient_id": c.patient_id,
                "site": c.site,
                "study_date": c.study_date.isoformat(),
                "dicom_dir": f"{_case_dir(c)}/dicom",
                "note_paths": ";".join(_note_path(c, k, t) for k, t in enumerate(c.note_types)),
                "note_dates": ";".join(d.isoformat() for d in c.note_dates),
                "note_types": ";".join(c.note_types),
                "tumor_present": "1" if c.tumor_present else "0",
                "malignant": "1" if c.malignant else "0",
            }
        )
        rec = {"case_id": c.case_id, **{k: _fmt(v) for k, v in c.record.items()}}
        rec["age"] = str(c.record["age"])
        rec.update({f"{lab}_unit": unit for lab, unit in UNITS.items()})
        records.append(rec)
    _write_csv(out_dir / "manifest.csv", MANIFEST_COLUMNS, manifest)
    _write_csv(out_dir / "records.csv", RECORD_COLUMNS, records)


def ground_truth(plan: CohortPlan, metadata_only: bool = False) -> dict[str, Any]:
    """The ground-truth document (JSON-ready, deterministic)."""
    cases = {}
    for c in plan.cases:
        cases[c.case_id] = {
            "patient_id": c.patient_id,
            "followup": c.followup,
            "tumor_present": c.tumor_present,
            "malignant": c.malignant,
            "p_malignant": c.p_malignant,
            "p_observed": c.p_observed,
            "logit_terms": c.terms,
            "oracle_p": c.oracle,
            "lesions": [
                {
                    "center_mm": list(les.center_mm),
                    "diameter_mm": les.diameter_mm,
                    "margin": les.margin,
                    "density": les.density,
                }
                for les in c.lesions
            ],
            "note_findings": c.findings,
        }
    return {
        "format": "mmclinic.synth.ground_truth/1",
        "generator_version": __version__,
        "seed": plan.settings.seed,
        "settings": vars(plan.settings) | {"cohort_key": plan.settings.cohort_key},
        "metadata_only": metadata_only,
        "coordinate_system": "DICOM patient LPS, millimetres",
        "label_definition": (
            "malignant: malignancy diagnosed at follow-up; it may be occult on this CT (no lesion rendered). "
            "p_malignant = sigmoid(bias + imaging + notes + tabular logit terms), from every latent variable "
            "(bayes_auroc); p_observed = E[p_malignant | what the case shows], which integrates out a CEA the "
            "record leaves out: the Bayes-optimal score (bayes_observed_auroc)."
        ),
        "model_params": M.params_dict(M.ModelParams()),
        **plan.summary,
        "cases": cases,
    }


def generate_cohort(
    settings: SynthSettings,
    out_dir: Path,
    workers: int = 1,
    metadata_only: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SynthResult:
    """Plan and write a cohort; deterministic for a given ``settings`` whatever ``workers`` is."""
    if workers < 1:
        raise InputError("synth.bad_settings", "workers must be >= 1")
    t0 = time.perf_counter()
    plan = sample_cohort(settings)
    out_dir.mkdir(parents=True, exist_ok=True)
    slices = 0
    if not metadata_only:
        jobs = [(c, settings, str(out_dir)) for c in plan.cases]
        if workers == 1:
            for done, job in enumerate(jobs, 1):
                slices += _write_case(job)
                if progress:
                    progress(done, len(jobs))
        else:
            # fork is cheap and safe here: the parent holds no threads or torch state at this point.
            ctx = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                for done, n in enumerate(pool.map(_write_case, jobs, chunksize=4), 1):
                    slices += n
                    if progress:
                        progress(done, len(jobs))
        write_tables(plan, out_dir)
    doc = ground_truth(plan, metadata_only)
    (out_dir / "ground_truth.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    seconds = time.perf_counter() - t0
    event(
        logger,
        "synth.cohort_written",
        cases=len(plan.cases),
        slices=slices,
        seconds=round(seconds, 2),
        metadata_only=metadata_only,
        workers=workers,
    )
    return SynthResult(out_dir=out_dir, plan=plan, seconds=seconds, slices_written=slices)
