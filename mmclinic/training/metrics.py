"""Evaluation metrics (numpy only, no torch): AUROC/AUPRC with bootstrap CIs, Brier, ECE, detection FROC.

The batch scorer imports this module to evaluate a scored cohort without loading a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import rankdata

from mmclinic.case import Prediction

F = NDArray[np.float64]
Metric = Callable[[F, F], float]


def _arrays(scores: ArrayLike, labels: ArrayLike) -> tuple[F, F]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if s.shape != y.shape:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    return s, y


def auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve via the rank-sum statistic (ties count half); nan with one class."""
    s, y = _arrays(scores, labels)
    pos = y > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)  # average ranks of ties
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def auprc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Average precision (step-wise area under the precision-recall curve); nan without positives."""
    s, y = _arrays(scores, labels)
    pos = y > 0.5
    if not pos.any():
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s_sorted, tp_sorted = s[order], pos[order].astype(np.float64)
    tp = np.cumsum(tp_sorted)
    fp = np.cumsum(1.0 - tp_sorted)
    # evaluate only at the last index of each tied score so ties do not depend on order
    last = np.r_[s_sorted[1:] != s_sorted[:-1], True]
    precision = tp[last] / (tp[last] + fp[last])
    recall = tp[last] / tp[-1]
    d_recall = np.diff(np.r_[0.0, recall])
    return float((precision * d_recall).sum())


def bayes_references(observed: Sequence[float | None], true_p: Sequence[float], labels: ArrayLike) -> dict[str, float]:
    """Reference AUROCs of a synthetic cohort's scores on the same cases as a model's.

    ``bayes_optimal``: of the Bayes-optimal score, ``p_observed`` (``E[p | what the case shows]``) where
    every case has one; then also ``true_probability``, of ``p_malignant``, which reads values no model
    sees (a CEA the record leaves out). Cohorts written before ``p_observed``: ``p_malignant``'s alone.
    """
    if len(observed) and all(o is not None for o in observed):
        obs = [float(o) for o in observed if o is not None]
        return {"bayes_optimal": auroc(obs, labels), "true_probability": auroc(true_p, labels)}
    return {"bayes_optimal": auroc(true_p, labels)}


def bayes_goal(auc: float, reference: Mapping[str, float]) -> dict[str, Any] | None:
    """The goal "fused AUROC >= Bayes-optimal - 0.03" against ``bayes_references``; None without a reference."""
    bayes = reference.get("bayes_optimal")
    if bayes is None or math.isnan(auc):
        return None
    goal: dict[str, Any] = {"target": "fused >= bayes - 0.03", "fused": auc, "bayes": bayes, "met": auc >= bayes - 0.03}
    if "true_probability" in reference:  # what the score that also reads unrecorded values reaches, for scale
        goal["true_probability"] = reference["true_probability"]
    return goal


def ece_goal(scores: Mapping[str, Any]) -> dict[str, Any]:
    """The goal "ECE <= 0.03" for ``evaluate_predictions``' scores, with what a calibrated model would show."""
    goal: dict[str, Any] = {"target": "<= 0.03", "value": scores["ece"], "met": scores["ece"] <= 0.03}
    ref = scores.get("ece_if_calibrated")
    if ref:  # what sampling noise alone gives on this cohort: the scale against which to read the value
        goal["if_calibrated_90pct"] = [ref["p05"], ref["p95"]]
    return goal


def brier(probs: ArrayLike, labels: ArrayLike) -> float:
    """Mean squared error of probabilities."""
    p, y = _arrays(probs, labels)
    return float(np.mean((p - (y > 0.5)) ** 2)) if p.size else float("nan")


def _bin_of(p: F, n_bins: int) -> NDArray[np.int64]:
    """Equal-width calibration bin of every probability (1.0 falls in the last bin)."""
    return np.clip((p * n_bins).astype(np.int64), 0, n_bins - 1)


def reliability(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> list[dict[str, float]]:
    """Equal-width bins: count, mean predicted probability, observed frequency (empty bins left out)."""
    p, y = _arrays(probs, labels)
    idx = _bin_of(p, n_bins)
    out = []
    for b in range(n_bins):
        sel = idx == b
        if sel.any():
            out.append(
                {"bin": b, "count": float(sel.sum()), "mean_prob": float(p[sel].mean()), "freq": float(y[sel].mean())}
            )
    return out


def ece(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """Expected calibration error with ``n_bins`` equal-width bins."""
    p, _ = _arrays(probs, labels)
    if p.size == 0:
        return float("nan")
    bins = reliability(probs, labels, n_bins)
    return float(sum(b["count"] * abs(b["mean_prob"] - b["freq"]) for b in bins) / p.size)


def ece_if_calibrated(probs: ArrayLike, n_bins: int = 15, n_sim: int = 1000, seed: int = 0) -> dict[str, float]:
    """ECE that a perfectly calibrated model with exactly these risks would show: mean and 90 % range.

    Labels are drawn as Bernoulli(risk) ``n_sim`` times. On a finite cohort the binned ECE is biased
    upwards by sampling noise alone, so a measured ECE means little without this reference.
    """
    p = np.asarray(probs, dtype=np.float64).ravel()
    if p.size == 0:
        return {"mean": float("nan"), "p05": float("nan"), "p95": float("nan")}
    onehot = np.zeros((p.size, n_bins))
    onehot[np.arange(p.size), _bin_of(p, n_bins)] = 1.0
    count = onehot.sum(0)
    used = count > 0
    mean_p = (p @ onehot)[used] / count[used]
    rng = np.random.default_rng(seed)
    sims = np.empty(n_sim)
    for start in range(0, n_sim, 100):  # blocks bound memory at 100 × n labels
        k = min(100, n_sim - start)
        y = (rng.random((k, p.size)) < p).astype(np.float64)
        freq = (y @ onehot)[:, used] / count[used]
        sims[start : start + k] = (count[used] * np.abs(freq - mean_p)).sum(1) / p.size
    lo, hi = np.percentile(sims, [5, 95])
    return {"mean": float(sims.mean()), "p05": float(lo), "p95": float(hi)}


def roc_points(scores: ArrayLike, labels: ArrayLike) -> tuple[F, F, F]:
    """(false-positive rate, true-positive rate, threshold) for every distinct score, descending."""
    s, y = _arrays(scores, labels)
    pos = y > 0.5
    thr = np.unique(s)[::-1]
    n_pos, n_neg = max(int(pos.sum()), 1), max(int((~pos).sum()), 1)
    tpr = np.array([((s >= t) & pos).sum() / n_pos for t in thr], dtype=np.float64)
    fpr = np.array([((s >= t) & ~pos).sum() / n_neg for t in thr], dtype=np.float64)
    return np.r_[0.0, fpr], np.r_[0.0, tpr], np.r_[np.inf, thr]


def youden_threshold(scores: ArrayLike, labels: ArrayLike) -> float:
    """Threshold maximising sensitivity + specificity − 1 (chosen on validation data)."""
    fpr, tpr, thr = roc_points(scores, labels)
    k = int(np.argmax(tpr - fpr))
    return float(thr[k]) if np.isfinite(thr[k]) else 1.0


def sens_spec(scores: ArrayLike, labels: ArrayLike, threshold: float) -> tuple[float, float]:
    """Sensitivity and specificity of ``score >= threshold``."""
    s, y = _arrays(scores, labels)
    pos, hit = y > 0.5, s >= threshold
    sens = float((hit & pos).sum() / pos.sum()) if pos.any() else float("nan")
    spec = float((~hit & ~pos).sum() / (~pos).sum()) if (~pos).any() else float("nan")
    return sens, spec


def bootstrap_ci(
    metric: Metric, scores: ArrayLike, labels: ArrayLike, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Percentile bootstrap CI over cases (resamples where the metric is undefined are skipped)."""
    s, y = _arrays(scores, labels)
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(n_boot):
        idx = rng.integers(0, s.size, s.size)
        v = metric(s[idx], y[idx])
        if np.isfinite(v):
            vals.append(v)
    if not vals:
        return float("nan"), float("nan")
    lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def paired_bootstrap_delta(
    metric: Metric,
    scores_a: ArrayLike,
    scores_b: ArrayLike,
    labels: ArrayLike,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, float]:
    """``metric(a) − metric(b)`` on the same cases with a paired percentile bootstrap CI."""
    a, y = _arrays(scores_a, labels)
    b, _ = _arrays(scores_b, labels)
    rng = np.random.default_rng(seed)
    deltas = []
    for _ in range(n_boot):
        idx = rng.integers(0, y.size, y.size)
        d = metric(a[idx], y[idx]) - metric(b[idx], y[idx])
        if np.isfinite(d):
            deltas.append(d)
    lo, hi = np.quantile(deltas, [alpha / 2, 1 - alpha / 2]) if deltas else (np.nan, np.nan)
    return {"delta": metric(a, y) - metric(b, y), "ci95": [float(lo), float(hi)]}  # type: ignore[dict-item]


# ------------------------------------------------------------------------------------------- detection


@dataclass(frozen=True)
class GtLesion:
    """A ground-truth lesion in patient LPS mm."""

    center_mm: tuple[float, float, float]
    diameter_mm: float


def detection_metrics(
    findings: Sequence[Sequence[tuple[tuple[float, float, float], float]]],
    lesions: Sequence[Sequence[GtLesion]],
    min_diameter_mm: float = 6.0,
    fp_per_scan: float = 1.0,
    match_margin_mm: float = 5.0,
    voxel_mm: float = 5.0,
    operating_confidence: float | None = None,
    size_bins_mm: Sequence[float] = (8.0, 10.0, 15.0, 20.0),
) -> dict[str, Any]:
    """Lesion-level sensitivity at ≤ ``fp_per_scan`` false positives per scan (FROC operating point).

    ``findings[i]`` are (centre_mm, confidence) of scan i; ``lesions[i]`` its ground truth. A finding
    hits a lesion when its centre lies within radius + ``match_margin_mm`` of the lesion centre
    (greedy by confidence, each lesion matched once). Hits on lesions smaller than ``min_diameter_mm``
    are ignored (neither true nor false positives), as in LUNA-style evaluation.

    ``by_size``: the sensitivity at that operating point per lesion-diameter bin (``size_bins_mm`` edges,
    the last bin open-ended), which says where a detector misses (at 5 mm voxels: the smallest lesions).
    """
    if len(findings) != len(lesions):
        raise ValueError("findings and lesions must have one entry per scan")
    # (confidence, scan, is_tp, centre error mm, diameter mm of the lesion hit)
    cands: list[tuple[float, int, bool, float, float]] = []
    n_target = 0
    for scan, (fs, gts) in enumerate(zip(findings, lesions, strict=True)):
        n_target += sum(1 for g in gts if g.diameter_mm >= min_diameter_mm)
        for (centre, conf), best in zip(fs, match_findings(fs, gts, match_margin_mm), strict=True):
            if best < 0:
                cands.append((conf, scan, False, np.nan, np.nan))
            elif gts[best].diameter_mm >= min_diameter_mm:
                err = float(np.linalg.norm(np.subtract(centre, gts[best].center_mm)))
                cands.append((conf, scan, True, err, gts[best].diameter_mm))
    n_scans = max(len(findings), 1)
    cands.sort(key=lambda c: -c[0])
    tp = fp = 0
    best_sens, best_thr = 0.0, float("inf")
    errs: list[float] = []
    errors_at: list[float] = []
    i = 0
    while i < len(cands):
        # consume every candidate with the same confidence together (a threshold cannot split ties)
        j = i
        while j < len(cands) and cands[j][0] == cands[i][0]:
            tp += cands[j][2]
            fp += not cands[j][2]
            if cands[j][2]:
                errs.append(cands[j][3])
            j += 1
        if fp / n_scans <= fp_per_scan and n_target:
            best_sens, best_thr, errors_at = tp / n_target, cands[i][0], list(errs)
        i = j
    froc = [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    at_op: dict[str, float] = {}
    if operating_confidence is not None:
        kept = [c for c in cands if c[0] >= operating_confidence]
        at_op = {
            "confidence": operating_confidence,
            "sensitivity": sum(c[2] for c in kept) / n_target if n_target else float("nan"),
            "fp_per_scan": sum(not c[2] for c in kept) / n_scans,
        }
    return {
        "at_operating_point": at_op,
        "n_scans": len(findings),
        "n_lesions": n_target,
        "sensitivity": best_sens if n_target else float("nan"),
        "fp_per_scan": fp_per_scan,
        "confidence_threshold": best_thr,
        "median_center_error_mm": float(np.median(errors_at)) if errors_at else float("nan"),
        "median_center_error_voxels": float(np.median(errors_at)) / voxel_mm if errors_at else float("nan"),
        "froc": {str(r): _sens_at(cands, n_scans, n_target, r) for r in froc},
        "by_size": _sensitivity_by_size(cands, lesions, best_thr, (min_diameter_mm, *size_bins_mm)),
    }


def _sensitivity_by_size(
    cands: Sequence[tuple[float, int, bool, float, float]],
    lesions: Sequence[Sequence[GtLesion]],
    confidence: float,
    edges: Sequence[float],
) -> list[dict[str, Any]]:
    """Lesions and hits at ``confidence`` or above per diameter bin ``[edges[k], edges[k + 1])``, the last open."""
    diameters = np.array([g.diameter_mm for gts in lesions for g in gts], dtype=np.float64)
    hit = np.array([c[4] for c in cands if c[2] and c[0] >= confidence], dtype=np.float64)
    out: list[dict[str, Any]] = []
    bounds = sorted(set(edges))
    for k, lo in enumerate(bounds):
        hi = bounds[k + 1] if k + 1 < len(bounds) else np.inf
        n = int(((diameters >= lo) & (diameters < hi)).sum())
        h = int(((hit >= lo) & (hit < hi)).sum())
        out.append(
            {
                "min_mm": lo,
                "max_mm": None if hi == np.inf else hi,
                "n_lesions": n,
                "hits": h,
                "sensitivity": h / n if n else float("nan"),
            }
        )
    return out


def match_findings(
    findings: Sequence[tuple[tuple[float, float, float], float]], lesions: Sequence[GtLesion], margin_mm: float = 5.0
) -> list[int]:
    """For each finding (centre_mm, confidence), the index of the lesion it hits, or -1.

    Greedy by confidence: each finding takes the nearest lesion not yet taken whose centre lies within
    its radius + ``margin_mm``; each lesion is matched once.
    """
    out = [-1] * len(findings)
    used: set[int] = set()
    for i in sorted(range(len(findings)), key=lambda i: -findings[i][1]):
        centre = findings[i][0]
        best, best_d = -1, np.inf
        for k, g in enumerate(lesions):
            d = float(np.linalg.norm(np.subtract(centre, g.center_mm)))
            if k not in used and d <= g.diameter_mm / 2.0 + margin_mm and d < best_d:
                best, best_d = k, d
        if best >= 0:
            used.add(best)
            out[i] = best
    return out


def finding_risk_metrics(
    findings: Sequence[Sequence[tuple[tuple[float, float, float], float, dict[str, float]]]],
    lesions: Sequence[Sequence[GtLesion]],
    truth: Sequence[Sequence[float]],
    match_margin_mm: float = 5.0,
) -> dict[str, Any]:
    """How well each way of giving a finding its malignancy risk ranks the findings of a case.

    ``findings[i]``: scan i's findings as (centre_mm, confidence, {method: risk}); ``truth[i]``: each
    ground-truth lesion's probability were it the only lesion. Per method: ``pair_concordance``, over
    pairs of findings in one case that hit two lesions of different truth, the share ranked as the truth
    ranks them (ties count half); ``hit_vs_miss_auroc``, over cases with hits and misses, the AUROC of
    the risk for "hits a lesion" among that case's findings, averaged over pairs like the concordance.
    """
    methods = sorted({m for fs in findings for f in fs for m in f[2]})
    agree = {m: 0.0 for m in methods}
    sep = {m: 0.0 for m in methods}
    n_pairs = n_sep = 0
    for fs, gts, ps in zip(findings, lesions, truth, strict=True):
        hit = match_findings([(f[0], f[1]) for f in fs], gts, match_margin_mm)
        for a in range(len(fs)):
            for b in range(a + 1, len(fs)):
                ha, hb = hit[a], hit[b]
                if ha >= 0 and hb >= 0 and ps[ha] != ps[hb]:
                    n_pairs += 1
                    for m in methods:
                        agree[m] += _concordant(fs[a][2][m] - fs[b][2][m], ps[ha] - ps[hb])
                elif (ha >= 0) != (hb >= 0):
                    n_sep += 1
                    for m in methods:  # the hit should carry the higher risk
                        sep[m] += _concordant(fs[a][2][m] - fs[b][2][m], 1.0 if ha >= 0 else -1.0)
    return {
        "n_lesion_pairs": n_pairs,
        "n_hit_miss_pairs": n_sep,
        "pair_concordance": {m: agree[m] / n_pairs if n_pairs else float("nan") for m in methods},
        "hit_vs_miss_auroc": {m: sep[m] / n_sep if n_sep else float("nan") for m in methods},
    }


def _concordant(d_score: float, d_truth: float) -> float:
    if d_score == 0:
        return 0.5
    return 1.0 if (d_score > 0) == (d_truth > 0) else 0.0


def _sens_at(cands: list[tuple[float, int, bool, float, float]], n_scans: int, n_target: int, rate: float) -> float:
    tp = fp = 0
    best = 0.0
    i = 0
    while i < len(cands) and n_target:
        j = i
        while j < len(cands) and cands[j][0] == cands[i][0]:
            tp += cands[j][2]
            fp += not cands[j][2]
            j += 1
        if fp / n_scans <= rate:
            best = tp / n_target
        i = j
    return best


# ------------------------------------------------------------------------------------------ case level


def _field(p: Prediction | Mapping[str, Any], name: str) -> Any:
    return p[name] if isinstance(p, Mapping) else getattr(p, name)


def evaluate_predictions(
    preds: Sequence[Prediction | Mapping[str, Any]],
    labels: Mapping[str, float] | Sequence[float],
    *,
    threshold: float = 0.5,
    tumor_labels: Mapping[str, float] | Sequence[float] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    n_bins: int = 15,
) -> dict[str, Any]:
    """Case-level metrics of malignancy risk (and tumor probability when tumor labels are given).

    ``preds`` are Predictions or their ``to_dict()``; ``labels`` map case_id → 0/1, or align with preds.
    """

    def aligned(lab: Mapping[str, float] | Sequence[float]) -> F:
        if isinstance(lab, Mapping):
            return np.array([float(lab[_field(p, "case_id")]) for p in preds], dtype=np.float64)
        return np.asarray(lab, dtype=np.float64)

    y = aligned(labels)
    risk = np.array([float(_field(p, "malignancy_risk")) for p in preds], dtype=np.float64)
    out = summarize(risk, y, threshold=threshold, n_boot=n_boot, seed=seed, n_bins=n_bins)
    if tumor_labels is not None:
        yt = aligned(tumor_labels)
        tp = np.array([float(_field(p, "tumor_probability")) for p in preds], dtype=np.float64)
        out["tumor"] = {"auroc": auroc(tp, yt), "auroc_ci95": list(bootstrap_ci(auroc, tp, yt, n_boot, seed))}
    return out


def summarize(
    risk: ArrayLike, y: ArrayLike, *, threshold: float = 0.5, n_boot: int = 1000, seed: int = 0, n_bins: int = 15
) -> dict[str, Any]:
    """All case-level metrics of one score vector."""
    s, yy = _arrays(risk, y)
    sens, spec = sens_spec(s, yy, threshold)
    return {
        "n": int(s.size),
        "n_positive": int((yy > 0.5).sum()),
        "auroc": auroc(s, yy),
        "auroc_ci95": list(bootstrap_ci(auroc, s, yy, n_boot, seed)),
        "auprc": auprc(s, yy),
        "auprc_ci95": list(bootstrap_ci(auprc, s, yy, n_boot, seed + 1)),
        "brier": brier(s, yy),
        "ece": ece(s, yy, n_bins),
        "ece_if_calibrated": ece_if_calibrated(s, n_bins, seed=seed),
        "threshold": float(threshold),
        "sensitivity": sens,
        "specificity": spec,
        "reliability": reliability(s, yy, n_bins),
    }
