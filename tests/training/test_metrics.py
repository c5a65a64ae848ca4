"""Metric functions against brute-force definitions and hand-worked examples."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmclinic.case import Finding, Prediction, Provenance
from mmclinic.training.metrics import (
    GtLesion,
    auprc,
    auroc,
    bayes_goal,
    bayes_references,
    bootstrap_ci,
    brier,
    detection_metrics,
    ece,
    ece_goal,
    ece_if_calibrated,
    evaluate_predictions,
    finding_risk_metrics,
    match_findings,
    paired_bootstrap_delta,
    sens_spec,
    summarize,
    youden_threshold,
)


def _pairwise_auroc(s: np.ndarray, y: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans()), min_size=2, max_size=30))
def test_auroc_equals_pairwise_definition_with_ties(data: list[tuple[int, bool]]) -> None:
    s = np.array([d[0] for d in data], dtype=float)
    y = np.array([d[1] for d in data], dtype=float)
    if y.min() == y.max():
        assert np.isnan(auroc(s, y))
    else:
        assert auroc(s, y) == pytest.approx(_pairwise_auroc(s, y))


def test_auprc_hand_example() -> None:
    # ranks: + (P=1,R=.5), - , + (P=2/3, R=1)  → AP = .5*1 + .5*2/3
    assert auprc([0.9, 0.8, 0.7], [1, 0, 1]) == pytest.approx(0.5 + 1 / 3)
    assert auprc([0.5, 0.5], [1, 0]) == pytest.approx(0.5)  # a tie is one threshold


def test_brier_ece_and_calibration() -> None:
    assert brier([1.0, 0.0, 0.5], [1, 0, 1]) == pytest.approx(0.25 / 3)
    rng = np.random.default_rng(0)
    p = rng.random(40000)
    y = (rng.random(40000) < p).astype(float)
    assert ece(p, y) < 0.015  # calibrated by construction
    assert ece(np.clip(p + 0.2, 0, 1), y) > 0.1  # shifted: clearly miscalibrated


def test_ece_reference_of_a_calibrated_model() -> None:
    rng = np.random.default_rng(3)
    p = rng.beta(1.0, 4.0, 1000)
    ref = ece_if_calibrated(p, seed=1)
    assert 0.0 < ref["p05"] < ref["mean"] < ref["p95"] < 0.1
    assert ece_if_calibrated(p, seed=1) == ref  # seeded: the report is reproducible
    # Labels drawn from the risks themselves: the measured ECE falls inside the 90 % range most of the time.
    inside = 0
    for k in range(40):
        y = (np.random.default_rng(100 + k).random(p.size) < p).astype(float)
        inside += ref["p05"] <= ece(p, y) <= ref["p95"]
    assert inside >= 30
    # Noise shrinks with the cohort: ten times the cases, a much lower reference.
    assert ece_if_calibrated(np.tile(p, 10), seed=1)["mean"] < 0.5 * ref["mean"]
    # A clearly miscalibrated model lies far above the range.
    y = (rng.random(p.size) < np.clip(p + 0.15, 0, 1)).astype(float)
    assert ece(p, y) > ref["p95"]


def test_operating_point_and_bootstrap() -> None:
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.9])
    y = np.array([0, 0, 1, 0, 1, 1])
    t = youden_threshold(s, y)
    assert t == pytest.approx(0.3)
    assert sens_spec(s, y, t) == (1.0, pytest.approx(2 / 3))
    lo, hi = bootstrap_ci(auroc, s, y, n_boot=200, seed=1)
    assert lo <= auroc(s, y) <= hi
    d = paired_bootstrap_delta(auroc, s, 1 - s, y, n_boot=200)
    assert d["delta"] > 0 and d["ci95"][0] <= d["delta"] <= d["ci95"][1]


def test_detection_sensitivity_at_fp_rate() -> None:
    gts = [[GtLesion((0.0, 0.0, 0.0), 10.0), GtLesion((50.0, 0.0, 0.0), 4.0)], [GtLesion((0.0, 0.0, 0.0), 20.0)], []]
    findings = [
        [((1.0, 0.0, 0.0), 0.9), ((50.0, 0.0, 0.0), 0.8), ((0.0, 80.0, 0.0), 0.7)],  # TP, ignored (<6 mm), FP
        [((30.0, 0.0, 0.0), 0.95)],  # too far: FP with the highest confidence
        [((5.0, 5.0, 5.0), 0.6), ((9.0, 9.0, 9.0), 0.5)],  # FP, FP
    ]
    r = detection_metrics(findings, gts, fp_per_scan=1.0)
    assert r["n_lesions"] == 2
    # Sweep: .95 FP(1) .9 TP .7 FP(2) .6 FP(3) .5 FP(4): 1 FP/scan over 3 scans = 3 FPs allowed.
    assert r["sensitivity"] == pytest.approx(0.5)
    assert r["median_center_error_mm"] == pytest.approx(1.0)
    assert r["froc"]["0.25"] == 0.0  # 0.75 FP allowed: the first candidate is already an FP
    # At the operating point (confidence >= 0.9) the 10 mm lesion is found and the 20 mm one missed;
    # the 4 mm lesion is below the 6 mm floor and in no bin.
    by = {(b["min_mm"], b["max_mm"]): (b["n_lesions"], b["hits"]) for b in r["by_size"]}
    assert by == {
        (6.0, 8.0): (0, 0),
        (8.0, 10.0): (0, 0),
        (10.0, 15.0): (1, 1),
        (15.0, 20.0): (0, 0),
        (20.0, None): (1, 0),
    }
    assert math.isnan(r["by_size"][0]["sensitivity"]) and r["by_size"][2]["sensitivity"] == 1.0


def test_detection_by_size_counts_only_hits_above_the_operating_confidence() -> None:
    gts = [[GtLesion((0.0, 0.0, 0.0), 7.0)], [GtLesion((0.0, 0.0, 0.0), 7.5)], [GtLesion((0.0, 0.0, 0.0), 30.0)]]
    # The 7.5 mm lesion's hit ranks below two false positives: at <= 0.5 FP/scan (1.5 FPs) it is not reached.
    findings = [[((0.0, 0.0, 0.0), 0.9)], [((0.0, 0.0, 0.0), 0.2), ((0.0, 90.0, 0.0), 0.6)], [((0.0, 90.0, 0.0), 0.5)]]
    r = detection_metrics(findings, gts, fp_per_scan=0.5, size_bins_mm=(10.0,))
    assert r["sensitivity"] == pytest.approx(1 / 3)
    assert [(b["min_mm"], b["max_mm"], b["n_lesions"], b["hits"]) for b in r["by_size"]] == [
        (6.0, 10.0, 2, 1),
        (10.0, None, 1, 0),
    ]


def test_match_findings_is_greedy_by_confidence_and_one_to_one() -> None:
    gts = [GtLesion((0.0, 0.0, 0.0), 10.0), GtLesion((12.0, 0.0, 0.0), 10.0)]
    # The second finding is nearer lesion 0 but less confident: the first takes lesion 0 first.
    fs = [((6.0, 0.0, 0.0), 0.9), ((1.0, 0.0, 0.0), 0.5), ((0.0, 40.0, 0.0), 0.95)]
    assert match_findings(fs, gts) == [0, -1, -1]
    assert match_findings([((11.0, 0.0, 0.0), 0.2), ((1.0, 0.0, 0.0), 0.9)], gts) == [1, 0]
    assert match_findings([], gts) == [] and match_findings(fs, []) == [-1, -1, -1]


def test_finding_risk_metrics_rank_within_cases() -> None:
    gts = [[GtLesion((0.0, 0.0, 0.0), 10.0), GtLesion((40.0, 0.0, 0.0), 10.0)], [GtLesion((0.0, 0.0, 0.0), 10.0)]]
    truth = [[0.2, 0.7], [0.5]]
    findings = [
        [
            ((0.0, 0.0, 0.0), 0.9, {"good": 0.3, "bad": 0.8}),  # lesion 0 (truth 0.2)
            ((40.0, 0.0, 0.0), 0.8, {"good": 0.6, "bad": 0.4}),  # lesion 1 (truth 0.7)
            ((0.0, 90.0, 0.0), 0.7, {"good": 0.1, "bad": 0.4}),  # a false positive
        ],
        [((0.0, 0.0, 0.0), 0.9, {"good": 0.5, "bad": 0.5}), ((80.0, 0.0, 0.0), 0.3, {"good": 0.2, "bad": 0.5})],
    ]
    r = finding_risk_metrics(findings, gts, truth)
    assert r["n_lesion_pairs"] == 1 and r["n_hit_miss_pairs"] == 3
    assert r["pair_concordance"] == {"bad": 0.0, "good": 1.0}
    # hit/miss pairs, good: .3>.1, .6>.1, .5>.2; bad: .8>.4, .4=.4, .5=.5
    assert r["hit_vs_miss_auroc"] == {"bad": pytest.approx(2.0 / 3.0), "good": 1.0}
    empty = finding_risk_metrics([[]], [[]], [[]])
    assert empty["n_lesion_pairs"] == 0 and empty["pair_concordance"] == {}


def test_evaluate_predictions_accepts_predictions_and_dicts() -> None:
    prov = Provenance("0" * 64, "t", "1", {}, "1", "", {}, "cpu", {}, ())
    preds = [
        Prediction(f"c{i}", "t", 0.5, r, (Finding((0, 0, 0), 5, 0.5, r),), {}, prov)
        for i, r in enumerate([0.1, 0.4, 0.35, 0.8])
    ]
    labels = {"c0": 0, "c1": 0, "c2": 1, "c3": 1}
    a = evaluate_predictions(preds, labels, n_boot=50)
    b = evaluate_predictions([p.to_dict() for p in preds], [0, 0, 1, 1], n_boot=50)
    assert a["auroc"] == b["auroc"] == pytest.approx(0.75)
    assert a["n"] == 4 and a["n_positive"] == 2 and "ece" in a and "auprc_ci95" in a


def test_metrics_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, mmclinic.training.metrics; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_bayes_reference_is_the_observed_score_when_every_case_has_one() -> None:
    y = np.array([0, 0, 1, 1])
    true_p = [0.1, 0.4, 0.35, 0.8]  # ranks one pair wrong: AUROC 0.75
    observed = [0.1, 0.3, 0.35, 0.8]  # all right: 1.0
    assert bayes_references(observed, true_p, y) == {"bayes_optimal": 1.0, "true_probability": 0.75}
    # A cohort written before p_observed (or one case without it): the true probability is the reference.
    assert bayes_references([None] * 4, true_p, y) == {"bayes_optimal": 0.75}
    assert bayes_references([0.1, None, 0.35, 0.8], true_p, y) == {"bayes_optimal": 0.75}


def test_bayes_goal_is_met_within_three_points() -> None:
    ref = {"bayes_optimal": 0.88, "true_probability": 0.89}
    met = bayes_goal(0.851, ref)
    assert met is not None and met["met"] and met["bayes"] == 0.88 and met["true_probability"] == 0.89
    missed = bayes_goal(0.849, {"bayes_optimal": 0.88})
    assert missed is not None and not missed["met"] and "true_probability" not in missed
    assert bayes_goal(0.9, {}) is None and bayes_goal(float("nan"), ref) is None


def test_ece_goal_carries_the_calibrated_noise_range_when_scored() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(0.05, 0.95, 400)
    scores = summarize(p, (rng.random(400) < p).astype(int), n_boot=20)
    goal = ece_goal(scores)
    assert goal["value"] == scores["ece"] and goal["met"] == (scores["ece"] <= 0.03)
    lo, hi = goal["if_calibrated_90pct"]
    assert 0 < lo < hi < 0.2
    assert ece_goal({"ece": 0.05}) == {"target": "<= 0.03", "value": 0.05, "met": False}
