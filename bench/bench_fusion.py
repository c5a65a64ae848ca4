"""Benchmarks: fusion forward as a share of end-to-end CPU time per case (goal ≤ 10 %); finding risk, detector cost."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from bench._timing import interleaved_medians, median_seconds
from mmclinic.engine.device import autocast
from mmclinic.engine.engine import InferenceEngine
from mmclinic.errors import ModelError
from mmclinic.model.batching import concat_batches, to_device
from mmclinic.registry import get_registry

REPEATS = int(os.environ.get("MMCLINIC_BENCH_REPEATS", "5"))
N_CASES = 8
WORK = Path(__file__).resolve().parent / "_work" / "fusion"


def _engine() -> InferenceEngine:
    try:
        return InferenceEngine.load("tumor-risk", device="cpu", batch_size=N_CASES)
    except ModelError:
        # No bundled weights yet: the fusion cost does not depend on the weights' values.
        from mmclinic.engine.factory import new_model, task_parts

        parts = task_parts(get_registry(), "tumor-risk")
        model = new_model(parts)
        return InferenceEngine(model, {}, parts.task, parts.plugins, torch.device("cpu"), "", batch_size=N_CASES)


def bench() -> list[dict[str, Any]]:
    """One row: candidate = fusion forward per case, baseline = whole pipeline per case (same cases)."""
    from mmclinic.cohort import iter_cases
    from mmclinic.synth import LABEL_COLUMNS, SynthSettings, generate_cohort

    if not (WORK / "manifest.csv").is_file():
        generate_cohort(SynthSettings(cases=N_CASES, seed=4242), WORK)
    cases = [c for c in iter_cases(WORK / "manifest.csv", labels=LABEL_COLUMNS) if not isinstance(c, Exception)]
    engine = _engine()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    def end_to_end() -> object:
        # What a worker does per batch: plugin loads (DICOM decode, tokenisation), frozen text model,
        # encoders, fusion, contributions and post-processing.
        return engine.predict_prepared([engine.prepare(c) for c in cases])

    batch = to_device(concat_batches([engine.case_batch(engine.prepare(c)) for c in cases]), engine.device)
    with torch.inference_mode(), autocast(engine.device):
        encoded = engine.model.encode(batch)
    hide = torch.zeros(len(cases), len(engine.modalities), dtype=torch.bool)

    def fusion_only() -> object:
        with torch.inference_mode(), autocast(engine.device):
            return engine.model.fuse(encoded, hide)

    isolation = _isolation_row(engine, cases, end_to_end)
    detector = _detector_row(engine, cases, end_to_end)
    total = median_seconds(end_to_end, repeats=max(1, REPEATS // 2)) / len(cases)
    fusion = median_seconds(fusion_only, repeats=REPEATS * 4) / len(cases)
    share = fusion / total
    cfg = engine.model.cfg
    return [
        {
            "name": "fusion_forward_share_of_case",
            "candidate_s": fusion,
            "baseline_s": total,
            "ratio": total / fusion,
            "target": 10.0,  # fusion ≤ 10 % of the end-to-end time per case
            "higher_is_better": True,
            "notes": (
                f"fusion transformer (d_model {cfg.d_model}, {cfg.n_layers} layers, {len(encoded)} modalities) "
                f"{fusion * 1e3:.2f} ms/case = {share:.2%} of end-to-end {total * 1e3:.0f} ms/case "
                f"(CPU, batch {len(cases)}, {torch.get_num_threads()} threads)"
            ),
        },
        isolation,
        *([detector] if detector else []),
    ]


def _turn_about_row(name: str, n_cases: int, end_to_end: Any, variant: Any, notes: str) -> dict[str, Any]:
    """``end_to_end`` (candidate) against ``variant`` (baseline), timed turn about; ``notes`` gets both ms/case."""
    cand, base = interleaved_medians(end_to_end, variant, repeats=max(1, REPEATS // 2))
    return {
        "name": name,
        "candidate_s": cand / n_cases,
        "baseline_s": base / n_cases,
        "ratio": base / cand,
        "target": 0.67,  # the extra work may add at most half the pipeline's time
        "higher_is_better": True,
        "notes": notes.format(cand=cand / n_cases * 1e3, base=base / n_cases * 1e3),
    }


def _isolation_row(engine: InferenceEngine, cases: list[Any], end_to_end: Any) -> dict[str, Any]:
    """End-to-end per case with each finding's risk by isolation vs by the confidence rule (same cases)."""
    encoder = engine.model.encoders["imaging"]
    findings = [len(p.findings) for p in end_to_end()]

    def by_rule() -> object:
        encoder.isolate = None  # the engine then shares the case risk by confidence
        try:
            return end_to_end()
        finally:
            del encoder.isolate

    multi = sum(n > 1 for n in findings)
    return _turn_about_row(
        "finding_isolation_end_to_end",
        len(cases),
        end_to_end,
        by_rule,
        "end-to-end {cand:.0f} ms/case with each finding's risk by isolation vs {base:.0f} ms/case by the "
        f"confidence rule; {multi} of {len(cases)} cases have 2+ findings ({sum(findings)} findings; one extra "
        "U-Net pass per such case)",
    )


def _detector_row(engine: InferenceEngine, cases: list[Any], end_to_end: Any) -> dict[str, Any] | None:
    """End-to-end per case with the findings detector vs with findings from the lesion map (same cases)."""
    encoder = engine.model.encoders["imaging"]
    detector = getattr(encoder, "detector", None)
    if detector is None:
        return None

    def lesion_map_only() -> object:
        encoder.detector = None  # the trunk then gives no detection map: findings from the lesion map
        try:
            return end_to_end()
        finally:
            encoder.detector = detector

    return _turn_about_row(
        "findings_detector_end_to_end",
        len(cases),
        end_to_end,
        lesion_map_only,
        "end-to-end {cand:.0f} ms/case with the findings detector (a second U-Net pass) vs {base:.0f} ms/case "
        "with findings from the lesion map",
    )
