"""Helpers shared by the benchmarks: median wall time of repeated calls, result rows, scratch space."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def median_seconds(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls, after ``warmup`` untimed calls."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_medians(
    candidate: Callable[[], object], baseline: Callable[[], object], repeats: int = 5, warmup: int = 1
) -> tuple[float, float]:
    """Median seconds of each, timed turn about (candidate, baseline, candidate, ...).

    Alternating puts both sides under the same drift of a shared machine (other jobs, the disk's
    write-back), which timing one side's runs after the other's does not.
    """
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        candidate()
        baseline()
    cand: list[float] = []
    base: list[float] = []
    for _ in range(repeats):
        for fn, times in ((candidate, cand), (baseline, base)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(cand), statistics.median(base)


def ratio_row(name: str, candidate: float, baseline: float, target: float, notes: str) -> dict[str, Any]:
    """One benchmark row; ratio = baseline / candidate (a throughput ratio, higher is better)."""
    return {
        "name": name,
        "candidate_s": candidate,
        "baseline_s": baseline,
        "ratio": baseline / candidate,
        "target": target,
        "higher_is_better": True,
        "notes": notes,
    }


def scratch_dir() -> Path:
    """tmpfs when there is one: a shared disk's latency swings would swamp both timings."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return shm
    scratch = Path(__file__).resolve().parent / "_work"  # git-ignored
    scratch.mkdir(exist_ok=True)
    return scratch
