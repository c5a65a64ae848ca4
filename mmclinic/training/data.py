"""Cohort data for training/evaluation: cases from a manifest, patient-level split, lesion ground truth."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmclinic.case import Case, stable_hash
from mmclinic.engine.geometry import patient_to_voxel
from mmclinic.errors import InputError, MmclinicError
from mmclinic.logs import event
from mmclinic.model.detection import sphere_mask
from mmclinic.training.metrics import GtLesion

log = logging.getLogger(__name__)


@dataclass
class Cohort:
    """Valid cases of a manifest, the rejected ones (reason codes) and per-case lesion ground truth."""

    cases: list[Case]
    rejected: dict[str, str] = field(default_factory=dict)
    lesions: dict[str, list[GtLesion]] = field(default_factory=dict)
    ground_truth: dict[str, Any] = field(default_factory=dict)  # the whole ground_truth.json (oracles etc.)


def load_cohort(manifest: Path, labels: Sequence[str]) -> Cohort:
    """Cases via ``mmclinic.cohort.iter_cases`` (``labels``: the task's) plus ``ground_truth.json``, if any."""
    import importlib

    # The manifest reader belongs to the cohort module (imported late: it is optional for inference).
    cohort_mod = importlib.import_module("mmclinic.cohort")

    if not manifest.is_file():
        raise InputError("manifest.not_found", str(manifest))
    cases: list[Case] = []
    rejected: dict[str, str] = {}
    for i, item in enumerate(cohort_mod.iter_cases(manifest, labels=labels)):
        if isinstance(item, MmclinicError):
            rejected[f"row{i}"] = item.reason
        else:
            cases.append(item)
    gt_path = manifest.parent / "ground_truth.json"
    gt: dict[str, Any] = json.loads(gt_path.read_text()) if gt_path.is_file() else {}
    event(log, "cohort.loaded", cases=len(cases), rejected=len(rejected), ground_truth=bool(gt))
    return Cohort(cases, rejected, lesions_from_ground_truth(gt), gt)


def _case_entries(gt: dict[str, Any]) -> dict[str, dict[str, Any]]:
    cases = gt.get("cases", {})
    if isinstance(cases, list):
        return {str(c["case_id"]): c for c in cases}
    return {str(k): v for k, v in cases.items()}


def lesions_from_ground_truth(gt: dict[str, Any]) -> dict[str, list[GtLesion]]:
    """``case_id → lesions`` (centre LPS mm, diameter mm) from a ground_truth.json document."""
    out: dict[str, list[GtLesion]] = {}
    for cid, entry in _case_entries(gt).items():
        lesions = entry.get("lesions", []) or []
        out[cid] = [
            GtLesion(tuple(float(v) for v in les["center_mm"]), float(les["diameter_mm"]))  # type: ignore[arg-type]
            for les in lesions
        ]
    return out


UNSCORED = -1  # assertion target of an item a case has no annotation for (the loss skips it)


def note_assertions(gt: dict[str, Any]) -> tuple[tuple[str, ...], tuple[str, ...], dict[str, list[int]]]:
    """Assertion annotations of the notes: items, states and ``case_id →`` state index per item.

    ``ground_truth.json`` records per case, for every finding its notes may mention, whether they state,
    hedge, negate or do not mention it (``note_findings``; the clinical-NLP assertion classes present,
    possible and absent, plus not mentioned). Items are every finding named in the cohort, sorted; a
    case that lacks an item, or names a state outside the generator's, gets ``UNSCORED`` there.
    Empty items when the document has no annotations.
    """
    from mmclinic.synth.model import NOTE_STATES

    entries = _case_entries(gt)
    items = tuple(sorted({str(f) for e in entries.values() for f in (e.get("note_findings") or {})}))
    index = {s: i for i, s in enumerate(NOTE_STATES)}
    out: dict[str, list[int]] = {}
    for cid, entry in entries.items():
        found = entry.get("note_findings")
        if isinstance(found, dict) and found:
            out[cid] = [index.get(str(found.get(f)), UNSCORED) for f in items]
    return items, (tuple(NOTE_STATES) if items else ()), out


def lesion_alone_risks(gt: dict[str, Any]) -> dict[str, list[float]]:
    """``case_id → ``, per ground-truth lesion, the generator's malignancy probability were it the only lesion.

    The generator's image term is its most suspicious lesion's score, so this is the case's probability
    with the image term replaced by that lesion's score. Empty when the document lacks the model
    parameters or the cases their logit terms (not a synthetic cohort of this generator).
    """
    from scipy.special import expit

    from mmclinic.synth.model import ModelParams, lesion_score

    params = gt.get("model_params")
    if not isinstance(params, dict):
        return {}
    # Only the lesion weights and the bias enter here; everything else keeps its default.
    prm = ModelParams(
        bias=float(params["bias"]),
        w_size=float(params["w_size"]),
        w_spic=float(params["w_spic"]),
        w_ps=float(params["w_ps"]),
    )
    out: dict[str, list[float]] = {}
    for cid, entry in _case_entries(gt).items():
        terms, lesions = entry.get("logit_terms"), entry.get("lesions") or []
        if not isinstance(terms, dict):
            return {}
        rest = prm.bias + float(terms["notes"]) + float(terms["tabular"])
        score = lesion_score(
            np.array([float(le["diameter_mm"]) for le in lesions], dtype=np.float64),
            np.array([le["margin"] == "spiculated" for le in lesions], dtype=np.bool_),
            np.array([le["density"] == "part_solid" for le in lesions], dtype=np.bool_),
            prm,
        )
        out[cid] = [float(v) for v in expit(rest + score)]
    return out


def case_scores(gt: dict[str, Any], key: str) -> dict[str, float]:
    """A per-case number from ground truth (e.g. ``p_malignant``), where present."""
    return {cid: float(e[key]) for cid, e in _case_entries(gt).items() if e.get(key) is not None}


def patient_split(cases: Sequence[Case], val_fraction: float, seed: int) -> tuple[list[Case], list[Case]]:
    """Train/validation split by patient: every case of a patient lands on the same side."""
    train: list[Case] = []
    val: list[Case] = []
    for c in cases:
        # A hash, not a shuffle: the assignment of a patient never depends on which other cases exist.
        u = int(stable_hash({"patient": c.patient_id, "seed": seed})[:8], 16) / 0xFFFFFFFF
        (val if u < val_fraction else train).append(c)
    return train, val


def lesion_target(
    lesions: Sequence[GtLesion],
    imaging_plugin: Any,
    meta: dict[str, Any],
    size: tuple[int, int, int],
    spacing_mm: tuple[float, float, float],
) -> torch.Tensor:
    """``[1, X, Y, Z]`` float mask: a ball per ground-truth lesion, mapped into the model's grid."""
    mask = np.zeros(size, dtype=bool)
    for les in lesions:
        centre = patient_to_voxel(imaging_plugin, meta, les.center_mm)
        mask |= sphere_mask(size, centre, max(les.diameter_mm / 2.0, 1e-3), spacing_mm)
    return torch.from_numpy(mask.astype(np.float32))[None]
