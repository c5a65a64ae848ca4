"""Where the fused model's gap to the Bayes-optimal AUROC lies: what its imaging inputs carry, against the truth.

Not a benchmark (``make bench`` does not run it) but the measurement behind the model card's "Known gaps":

    python -m bench.gap_analysis --manifest runs/cohort_train/manifest.csv --cache runs/cache --out runs/gap.json

For every case of a synthetic cohort it runs the bundled model's CT encoder and findings detector, then fits
logistic regressions of the malignancy label (5-fold cross-validation, folds by patient) on: the generator's
true imaging quantities (its imaging logit term; the tumor's presence, largest diameter and density), the
CT encoder's lesion-token statistics (what the risk reads), and the detector's findings at the operating
cut-off. The same fits with the notes' finding states and the record added give the fused-level picture.
The fits are a ceiling check, not a model: the generator's terms are linear, so a linear fit of the true
quantities comes close to the Bayes-optimal score.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mmclinic.engine.engine import InferenceEngine
from mmclinic.model.detection import find_lesion_regions
from mmclinic.model.fusion import DETECTION_KEY, LESION_KEY
from mmclinic.training.cache import CaseCache, batch_of, safe_get
from mmclinic.training.data import load_cohort

STATES = ("negated", "hedged", "stated")  # vs unmentioned


def _findings(prob: np.ndarray, image: np.ndarray, engine: InferenceEngine) -> list[list[float]]:
    """Per finding above the cut-off: diameter (mm), confidence, weighted mean and spread of intensity."""
    found, regions = find_lesion_regions(prob, engine.spec.imaging.spacing_mm, engine.detection)
    out = []
    for k, f in enumerate(found):
        m = regions == k + 1
        w = prob[m] / prob[m].sum()
        mean = float((w * image[m]).sum())
        spread = float(np.sqrt(max(float((w * image[m] ** 2).sum()) - mean * mean, 0.0)))
        out.append([f.diameter_mm, f.confidence, mean, spread])
    return out


def _summary(found: list[list[float]], intensity: bool) -> list[float]:
    """Case features from findings: any, largest diameter, top confidence, count (+ the largest's intensity)."""
    if not found:
        return [0.0] * (6 if intensity else 4)
    big = max(found, key=lambda f: f[0])
    row = [1.0, big[0], max(f[1] for f in found), float(len(found))]
    return row + (big[2:4] if intensity else [])


def measure(manifest: Path, cache_dir: Path, limit: int = 0) -> dict[str, Any]:
    engine = InferenceEngine.load("tumor-risk", device="cpu")
    cohort = load_cohort(manifest, engine.spec.labels)
    cache = CaseCache(cache_dir, engine)
    enc = engine.model.encoders["imaging"]
    truth = cohort.ground_truth["cases"]
    records = pd.read_csv(manifest.parent / "records.csv").set_index("case_id")
    rows: list[dict[str, Any]] = []
    for case in cohort.cases[: limit or None]:
        got = safe_get(cache, case)
        if not isinstance(got, dict) or not got["imaging"].present:
            continue
        b = batch_of([got], ("imaging",))["imaging"]
        with torch.no_grad():
            t = enc.trunk(b)
            lesion = torch.sigmoid(t["extra." + LESION_KEY] + engine.model.lesion_bias)[0, 0].numpy()
            detector = t.get("extra." + DETECTION_KEY)
            det = torch.sigmoid(detector)[0, 0].numpy() if detector is not None else lesion
        image = b["image"][0, 0].numpy()
        rows.append(
            {
                "case": case.case_id,
                "stats": t["lesion_stats"][0].tolist(),
                "detector": _findings(det, image, engine),
                "lesion_map": _findings(lesion, image, engine),
            }
        )
    ids = [r["case"] for r in rows]
    y = np.array([truth[c]["malignant"] for c in ids], dtype=int)
    groups = [truth[c]["patient_id"] for c in ids]

    def cv(x: np.ndarray) -> float:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
        p = cross_val_predict(model, x, y, groups=groups, cv=GroupKFold(5), method="predict_proba")[:, 1]
        return round(float(roc_auc_score(y, p)), 4)

    def true_imaging(c: str) -> list[float]:
        les = truth[c]["lesions"]
        if not les:
            return [0.0, 0.0, 0.0]
        return [1.0, max(le["diameter_mm"] for le in les), float(any(le["density"] != "solid" for le in les))]

    term = np.array([[truth[c]["logit_terms"]["imaging"]] for c in ids])
    tumor = np.array([true_imaging(c) for c in ids])
    stats = np.array([r["stats"] for r in rows])
    det = np.array([_summary(r["detector"], True) for r in rows])
    lmap = np.array([_summary(r["lesion_map"], False) for r in rows])
    items = sorted(truth[ids[0]]["note_findings"])
    notes = np.array([[float(truth[c]["note_findings"][i] == s) for i in items for s in STATES] for c in ids])
    rec = records.loc[ids]
    cea = rec["cea"].astype(float)
    tab = np.column_stack(
        [
            rec["age"],
            rec["pack_years"].fillna(0.0),
            np.log(cea.fillna(2.2) / 2.2),
            cea.isna(),
            rec["family_history"].astype(str).str.lower().eq("true"),
            rec["smoking_status"].eq("former"),
            rec["smoking_status"].eq("current"),
        ]
    ).astype(float)
    with_tumor = tumor[:, 0] == 1

    def sizing(f: np.ndarray) -> dict[str, Any]:
        both = with_tumor & (f[:, 0] == 1)
        return {
            "tumor_scans_with_a_finding": int(both.sum()),
            "tumor_scans": int(with_tumor.sum()),
            "scans_without_tumor_with_a_finding": int(((~with_tumor) & (f[:, 0] == 1)).sum()),
            "scans_without_tumor": int((~with_tumor).sum()),
            "largest_diameter_corr": round(float(np.corrcoef(f[both, 1], tumor[both, 1])[0, 1]), 3),
            "largest_diameter_mae_mm": round(float(np.abs(f[both, 1] - tumor[both, 1]).mean()), 2),
        }

    ctx = np.column_stack([notes, tab])
    return {
        "manifest": str(manifest),
        "cases": len(ids),
        "method": "logistic regression, 5-fold cross-validation with folds by patient; AUROC of the held-out folds",
        "true_probability_auroc": round(float(roc_auc_score(y, [truth[c]["p_malignant"] for c in ids])), 4),
        "bayes_observed_auroc": (
            round(float(roc_auc_score(y, [truth[c]["p_observed"] for c in ids])), 4)
            if all("p_observed" in truth[c] for c in ids)
            else None
        ),
        "imaging_only": {
            "true_imaging_term": round(float(roc_auc_score(y, term[:, 0])), 4),
            "true_presence_diameter_density": cv(tumor),
            "true_presence_diameter": cv(tumor[:, :2]),
            "lesion_token_statistics": cv(stats),
            "detector_findings": cv(det),
            "lesion_map_findings": cv(lmap),
        },
        "with_notes_states_and_record": {
            "true_imaging_term": cv(np.column_stack([ctx, term])),
            "true_presence_diameter_density": cv(np.column_stack([ctx, tumor])),
            "lesion_token_statistics": cv(np.column_stack([ctx, stats])),
            "detector_findings": cv(np.column_stack([ctx, det])),
        },
        "sizing": {"detector": sizing(det), "lesion_map": sizing(lmap)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--limit", type=int, default=0, help="First N cases only (0: all).")
    args = ap.parse_args()
    torch.set_num_threads(2)
    result = measure(args.manifest, args.cache, args.limit)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
