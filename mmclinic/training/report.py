"""Evaluation report files: ``report.json``, ``report.md`` and PNG plots (ROC, reliability, ablation)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np


def _fmt(v: Any, nd: int = 3) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.{nd}f}"
    return str(v)


def _ci(m: dict[str, Any], key: str) -> str:
    lo, hi = m.get(f"{key}_ci95", [float("nan")] * 2)
    return f"{_fmt(m[key])} [{_fmt(lo)}, {_fmt(hi)}]"


def markdown(r: dict[str, Any]) -> str:
    """Human-readable summary of a report dict."""
    lines = [
        f"# Evaluation of `{r['model']}` on `{r['manifest']}`",
        "",
        f"- task: {r['task']}; modalities: {', '.join(r['modalities'])}; weights SHA-256: `{r['weights_sha256']}`",
        f"- evaluable cases: {r['n_cases']} (rejected: {r['n_rejected']} {r['rejected_reasons'] or ''})",
        f"- CIs: percentile bootstrap over cases, {r['n_boot']} resamples",
        "",
        "## Case-level malignancy risk",
        "",
        "| model | AUROC [95% CI] | AUPRC [95% CI] | Brier | ECE (15 bins) | threshold | sens | spec |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = [("fused", r["fused"])]
    rows += [(f"fused, {k.replace('_', ' ')} at test time", v) for k, v in r["ablation"].items()]
    rows += [(f"trained on {k} only" if "+" not in k else f"trained on {k}", v) for k, v in r["compare"].items()]
    for name, m in rows:
        lines.append(
            f"| {name} | {_ci(m, 'auroc')} | {_ci(m, 'auprc')} | {_fmt(m['brier'])} | {_fmt(m['ece'])} | "
            f"{_fmt(m['threshold'])} | {_fmt(m['sensitivity'])} | {_fmt(m['specificity'])} |"
        )
    if r["compare"]:
        lines += ["", "## Fused vs. other models (paired bootstrap, same cases)", ""]
        for k, v in r["compare"].items():
            d = v["fused_minus_this_auroc"]
            lines.append(f"- fused − {k}: ΔAUROC {_fmt(d['delta'])} [{_fmt(d['ci95'][0])}, {_fmt(d['ci95'][1])}]")
            if "fused_without_missing_minus_this_auroc" in v:
                lines.append(
                    f"  - fused with the missing modality removed − {k}: "
                    f"{_fmt(v['fused_without_missing_minus_this_auroc'])}"
                )
    if r["reference"]:
        lines += ["", "## Reference scores from the generator", ""]
        lines += [f"- {k}: AUROC {_fmt(v)}" for k, v in r["reference"].items()]
    det = r.get("detection")
    if det:
        lines += [
            "",
            "## Detection (lesions ≥ 6 mm)",
            "",
            f"- sensitivity at ≤ {det['fp_per_scan']} FP/scan: {_fmt(det['sensitivity'])} "
            f"({det['n_lesions']} lesions, {det['n_scans']} scans)",
            f"- median centre error: {_fmt(det['median_center_error_mm'])} mm "
            f"({_fmt(det['median_center_error_voxels'])} voxels)",
            "- FROC: " + ", ".join(f"{k} FP/scan → {_fmt(v)}" for k, v in det["froc"].items()),
        ]
        if det.get("by_size"):
            lines += ["", f"Sensitivity by lesion diameter at ≤ {det['fp_per_scan']} FP/scan:", ""]
            lines += ["| diameter (mm) | lesions | found | sensitivity |", "|---|---|---|---|"]
            for b in det["by_size"]:
                span = (
                    f"{_fmt(b['min_mm'], 0)}–{_fmt(b['max_mm'], 0)}"
                    if b["max_mm"] is not None
                    else f"≥ {_fmt(b['min_mm'], 0)}"
                )
                lines.append(f"| {span} | {b['n_lesions']} | {b['hits']} | {_fmt(b['sensitivity'])} |")
    fr = r.get("finding_risk")
    if fr:
        conc, sep = fr["pair_concordance"], fr["hit_vs_miss_auroc"]
        lines += [
            "",
            "## Per-finding malignancy risk (findings at the operating point)",
            "",
            "Truth: the generator's probability were that lesion the case's only one. `isolated`: the model's "
            "risk with the other findings read as background (what predictions carry); `by_confidence`: the "
            "case risk scaled by detection confidence; `isolated_x_confidence`: the isolated risk times the "
            "detector's confidence (the chance the finding is a malignant lesion, were the confidence calibrated).",
            "",
            "| method | lesion pairs ranked as the truth | hit ranked above miss |",
            "|---|---|---|",
            *(f"| {m} | {_fmt(conc[m])} | {_fmt(sep[m])} |" for m in conc),
            "",
            f"- {fr['n_lesion_pairs']} pairs of findings on two lesions of one case; {fr['n_hit_miss_pairs']} "
            "pairs of a finding on a lesion and a false positive in one case",
        ]
    if r.get("goals"):
        lines += ["", "## Goals", ""]
        for k, g in r["goals"].items():
            shown = {kk: (_fmt(vv) if isinstance(vv, float) else vv) for kk, vv in g.items() if kk not in ("met",)}
            lines.append(f"- {'MET' if g['met'] else 'MISSED'} — {k}: {shown}")
    lines += ["", "Plots: `roc.png`, `reliability.png`, `ablation.png`.", ""]
    return "\n".join(lines)


def write_report(out: Path, report: dict[str, Any], curves: dict[str, Any], main: Any, y: Any) -> None:
    """Write JSON, Markdown and plots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_json_default))
    (out / "report.md").write_text(markdown(report))
    _plots(out, report, curves)


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return str(v)


def _plots(out: Path, r: dict[str, Any], curves: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (fpr, tpr, _) in curves.items():
        auc = r["fused"]["auroc"] if name == "fused" else r["compare"][name]["auroc"]
        ax.plot(fpr, tpr, label=f"{name} (AUROC {auc:.3f})")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="1 − specificity", ylabel="sensitivity", title="ROC: malignancy")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "roc.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5, 5))
    bins = r["fused"]["reliability"]
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.plot([b["mean_prob"] for b in bins], [b["freq"] for b in bins], "o-", label="fused")
    for b in bins:
        ax.annotate(str(int(b["count"])), (b["mean_prob"], b["freq"]), fontsize=6)
    ax.set(xlabel="predicted risk", ylabel="observed frequency", title=f"Reliability (ECE {r['fused']['ece']:.3f})")
    fig.tight_layout()
    fig.savefig(out / "reliability.png", dpi=110)
    plt.close(fig)

    names = ["fused"] + [f"−{k.removeprefix('without_')}" for k in r["ablation"]] + [f"{k} model" for k in r["compare"]]
    entries = [r["fused"], *r["ablation"].values(), *r["compare"].values()]
    vals = [e["auroc"] for e in entries]
    err = np.array([[v - e["auroc_ci95"][0], e["auroc_ci95"][1] - v] for v, e in zip(vals, entries, strict=True)]).T
    fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(names)), 4))
    ax.bar(
        range(len(names)),
        vals,
        yerr=err,
        capsize=3,
        color=["C0"] + ["C1"] * len(r["ablation"]) + ["C2"] * len(r["compare"]),
    )
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set(ylabel="AUROC (95% CI)", ylim=(0.4, 1.0), title="Modality ablation and single-modality models")
    fig.tight_layout()
    fig.savefig(out / "ablation.png", dpi=110)
    plt.close(fig)
