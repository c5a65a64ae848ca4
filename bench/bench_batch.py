"""Benchmarks of cohort scoring: pipeline overlap, scaling with cohort size, Ray engine vs local engine.

All on the real engine (CT + notes + records plugins) and a generated cohort; the tumor-risk task's bundled
weights when installed, else a fixed-seed random model of the same architecture (speed does not depend on it).
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench._timing import median_seconds, ratio_row
from mmclinic.batch import ScoreOptions, score_cohort
from mmclinic.batch.items import read_items
from mmclinic.batch.runner import load_engine
from mmclinic.synth import LABEL_COLUMNS

N = int(os.environ.get("MMCLINIC_BENCH_BATCH_CASES", "8"))
REPEATS = int(os.environ.get("MMCLINIC_BENCH_REPEATS", "3"))
BATCH, WORKERS = 4, 2


def _model(work: Path) -> str:
    """The installed task's weights, or a fixed-seed random checkpoint over the installed plugins."""
    import torch

    from mmclinic.engine.checkpoint import save_checkpoint
    from mmclinic.engine.factory import model_meta, new_model, task_parts
    from mmclinic.plugin_api import TaskPlugin
    from mmclinic.registry import get_registry

    task = get_registry().get("task", "tumor-risk")
    assert isinstance(task, TaskPlugin)
    if task.weights_path() is not None:
        return "tumor-risk"
    torch.manual_seed(0)
    parts = task_parts(get_registry(), "tumor-risk")
    model = new_model(parts)
    path = work / "model.pt"
    save_checkpoint(path, model, model_meta(parts, model))
    return str(path)


def _cohort(work: Path, cases: int) -> Path:
    from mmclinic.synth import SynthSettings, generate_cohort

    out = work / f"cohort{cases}"
    generate_cohort(SynthSettings(cases=cases, seed=11), out)
    return out / "manifest.csv"


def _runner(manifest: Path, work: Path, factory: Callable[[], Any], engine: str = "local") -> Callable[[], object]:
    """A fresh (un-resumed) run per call: each call gets its own output and journal."""

    def run() -> object:
        out = Path(tempfile.mkdtemp(dir=work, prefix=f"run-{engine}-")) / "results.parquet"
        opts = ScoreOptions(
            manifest=manifest,
            out=out,
            engine=engine,  # type: ignore[arg-type]
            batch_size=BATCH,
            workers=WORKERS,
            progress=False,
            n_boot=10,
        )
        s = score_cohort(opts, engine_factory=factory)
        assert s.scored == len(read_items(manifest, None, LABEL_COLUMNS)), s.failed
        return s

    return run


def bench() -> list[dict[str, Any]]:
    """Rows: pipeline vs slowest stage (>= 0.8x); N vs 4N cases (4N <= 4.4x N); Ray vs local (>= 0.6x)."""
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    rows = []
    try:
        model = _model(work)
        engine = load_engine(model, "cpu", BATCH)
        small, large = _cohort(work, N), _cohort(work, 4 * N)
        cases = [it.case for it in read_items(small, None, LABEL_COLUMNS)]

        # 1. Pipeline efficiency: the whole run vs its slowest stage run alone on the same cases.
        pipeline = median_seconds(_runner(small, work, lambda: engine), REPEATS)

        def prepare_alone() -> list[Any]:
            with ThreadPoolExecutor(WORKERS) as pool:
                return list(pool.map(engine.prepare, cases))

        prepared = prepare_alone()

        def predict_alone() -> object:
            return [engine.predict_prepared(prepared[i : i + BATCH]) for i in range(0, len(prepared), BATCH)]

        t_prepare = median_seconds(prepare_alone, REPEATS)
        t_predict = median_seconds(predict_alone, REPEATS)
        slowest, which = max((t_prepare, "prepare"), (t_predict, "predict"))
        rows.append(
            ratio_row(
                "batch.pipeline_vs_slowest_stage",
                pipeline,
                slowest,
                0.8,
                f"{N} cases, batch {BATCH}, {WORKERS} prefetch threads; stages alone: prepare {t_prepare:.2f} s, "
                f"predict {t_predict:.2f} s (slowest: {which}); run includes journal, table and metrics writes",
            )
        )

        # 2. Scaling: 4N cases should take at most 4.4x the time of N (ratio = 4 * t_N / t_4N >= 4 / 4.4).
        t_large = median_seconds(_runner(large, work, lambda: engine), max(1, REPEATS - 1), warmup=0)
        rows.append(
            ratio_row(
                "batch.scaling_4n_vs_n",
                t_large,
                4 * pipeline,
                4 / 4.4,
                f"{N} cases {pipeline:.2f} s, {4 * N} cases {t_large:.2f} s "
                f"({t_large / pipeline:.2f}x the time for 4x the cases)",
            )
        )

        # 3. Ray vs local on the same CPUs; both runs build their engine(s), only ray.init is excluded.
        try:
            import ray
        except ImportError:
            return rows
        factory = functools.partial(load_engine, model, "cpu", BATCH)
        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
        try:
            t0 = time.perf_counter()
            # On the 4N cohort: each actor loads its own engine, a fixed cost that a tiny cohort cannot amortise.
            reps = max(1, REPEATS - 2)
            t_ray = median_seconds(_runner(large, work, factory, "ray"), reps, warmup=0)
            t_local = median_seconds(_runner(large, work, factory), reps, warmup=0)
            rows.append(
                ratio_row(
                    "batch.ray_vs_local",
                    t_ray,
                    t_local,
                    0.6,
                    f"{4 * N} cases, {WORKERS} actors vs {WORKERS} prefetch threads, engine load included in both, "
                    f"Ray start-up excluded (bench took {time.perf_counter() - t0:.0f} s)",
                )
            )
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


if __name__ == "__main__":
    for r in bench():
        print(r)
