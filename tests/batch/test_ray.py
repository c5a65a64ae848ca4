"""The Ray Data engine on a local Ray instance: same risks as the local engine, resumable through the journal."""

from __future__ import annotations

import functools
import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from _support import require
from batch_compare import COMPARE

from mmclinic.batch import ScoreOptions, ScoreSummary, score_cohort
from mmclinic.batch.journal import Journal, journal_path
from mmclinic.batch.runner import load_engine

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_session() -> Iterator[Any]:
    """One local Ray instance for the module (start-up is slow on 2 CPUs)."""
    require(importlib.util.find_spec("ray") is not None, "ray is not installed (pip install 'mmclinic[ray]')")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=200 * 1024**2)
    yield ray
    ray.shutdown()


def test_ray_engine_gives_the_local_engines_results_bit_for_bit(
    ray_session: Any, damaged: Path, checkpoint: Path, reference: tuple[Path, ScoreSummary], tmp_path: Path
) -> None:
    out = tmp_path / "ray.parquet"
    opts = ScoreOptions(
        manifest=damaged,
        out=out,
        model=str(checkpoint),
        engine="ray",
        batch_size=2,
        workers=2,
        progress=False,
        n_boot=20,
    )
    factory = functools.partial(load_engine, str(checkpoint), "cpu", 2)
    s = score_cohort(opts, engine_factory=factory)
    ref_summary = reference[1]
    assert (s.scored, s.skipped, s.failed) == (5, 0, ref_summary.failed)
    ref, got = pd.read_parquet(reference[0]), pd.read_parquet(out)
    exact = [c for c in COMPARE if c != "findings"]
    pd.testing.assert_frame_equal(ref[exact], got[exact], check_exact=True)
    # Finding centres (mm) differ in the last bits on the actors, which Ray runs with one torch thread;
    # they agree far below a micrometre, and every other finding field exactly.
    for a, b in zip(ref["findings"], got["findings"], strict=True):
        fa, fb = json.loads(a), json.loads(b)
        assert [{**f, "center_mm": None} for f in fa] == [{**f, "center_mm": None} for f in fb]
        for x, y in zip(fa, fb, strict=True):
            assert x["center_mm"] == pytest.approx(y["center_mm"], abs=1e-6)

    # A second Ray run over the same journal finds everything done and scores nothing.
    again = score_cohort(opts, engine_factory=factory)
    assert (again.scored, again.skipped) == (0, 5)
    with Journal(journal_path(out)) as j:
        assert j.count_results() == 5
