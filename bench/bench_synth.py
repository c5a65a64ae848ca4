"""Synthetic cohort throughput: ``mmclinic synth`` end to end vs plain pydicom ``save_as`` of the same slices."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench._timing import median_seconds, scratch_dir

CASES = 8
SEED = 12345


def bench() -> list[dict[str, Any]]:
    """Two rows: the whole generator, and the DICOM encoder alone, each against pydicom ``save_as``."""
    from mmclinic.synth import SynthSettings, generate_cohort
    from mmclinic.synth.anatomy import render_ct
    from mmclinic.synth.dicom import SeriesInfo, build_slices, encode_series, slice_filename
    from mmclinic.synth.plan import STREAM_RENDER, case_rng, sample_cohort

    settings = SynthSettings(cases=CASES, seed=SEED)
    geom = settings.geometry
    plan = sample_cohort(settings)
    work = Path(tempfile.mkdtemp(prefix="mmclinic-bench-synth-", dir=scratch_dir()))
    try:
        series = []
        for c in plan.cases:
            vol = render_ct(c.anatomy, list(c.lesions), geom, case_rng(SEED, STREAM_RENDER, c.index))
            info = SeriesInfo(
                f"{settings.cohort_key}:{c.case_id}",
                f"SYNTH^{c.patient_id}",
                c.patient_id,
                str(c.record["sex"]),
                int(c.record["age"]),
                c.study_date.strftime("%Y%m%d"),
                c.study_time,
                f"SYN{c.index:07d}",
                c.site,
            )
            series.append((vol, info))
        prebuilt = [build_slices(vol, geom, info) for vol, info in series]
        slices = CASES * geom.slices

        def baseline() -> None:
            for i, datasets in enumerate(prebuilt):
                folder = work / "baseline" / f"s{i}"
                folder.mkdir(parents=True, exist_ok=True)
                for k, ds in enumerate(datasets):
                    ds.save_as(folder / slice_filename(k), enforce_file_format=True)

        def full() -> None:
            generate_cohort(settings, work / "cohort", workers=1)

        def encode_only() -> None:
            for i, (vol, info) in enumerate(series):
                folder = work / "encoded" / f"s{i}"
                folder.mkdir(parents=True, exist_ok=True)
                for k, data in enumerate(encode_series(vol, geom, info)):
                    (folder / slice_filename(k)).write_bytes(data)

        base_s = median_seconds(baseline, repeats=3)
        full_s = median_seconds(full, repeats=3)
        enc_s = median_seconds(encode_only, repeats=3)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return [
        {
            "name": "synth_cohort_vs_pydicom_save",
            "candidate_s": full_s,
            "baseline_s": base_s,
            "ratio": base_s / full_s,
            "target": 0.8,  # whole generator within 1.25x of bare save_as (measured 0.95-1.12 on a loaded 2-core box)
            "higher_is_better": True,
            "notes": (
                f"{CASES} cases / {slices} slices: full generator (plan + render + notes + DICOM + tables) "
                f"{slices / full_s:.0f} slices/s vs pydicom save_as of prebuilt datasets {slices / base_s:.0f} slices/s"
            ),
        },
        {
            "name": "synth_dicom_encode_vs_pydicom_save",
            "candidate_s": enc_s,
            "baseline_s": base_s,
            "ratio": base_s / enc_s,
            "target": 3.0,
            "higher_is_better": True,
            "notes": (
                f"byte-identical files; template encoder {slices / enc_s:.0f} slices/s "
                f"(incl. header build) vs save_as {slices / base_s:.0f} slices/s"
            ),
        },
    ]
