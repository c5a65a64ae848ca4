"""CT imaging plugin throughput: load-only and full preprocessing vs raw pydicom, pylibjpeg vs pydicom decoders."""

from __future__ import annotations

import shutil
import statistics
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from bench._timing import median_seconds, scratch_dir

SEED = 7


def _write_series(folder: Path, size: int, slices: int, spacing: float, ts: str = "") -> list[Path]:
    """A CT-like series (body ellipse + noise, int16 stored, intercept -1024) written by pydicom."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

    rng = np.random.default_rng(SEED)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    body = ((yy - size / 2) / (size * 0.38)) ** 2 + ((xx - size / 2) / (size * 0.45)) ** 2 <= 1
    series_uid, study_uid = generate_uid(), generate_uid()
    paths = []
    for k in range(slices):
        hu = np.where(body, 40.0, -1000.0) + rng.normal(0, 15, (size, size))
        stored = np.round(hu + 1024).astype(np.int16)
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 2, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.PixelSpacing = [spacing, spacing]
        ds.SliceThickness = 5.0
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-size * spacing / 2, -size * spacing / 2, 5.0 * k]
        ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
        ds.PixelData = stored.tobytes()
        if ts and UID(ts).is_compressed:
            ds.compress(ts, stored, encoding_plugin="pylibjpeg" if "1.2.5" in ts or ".90" in ts else "")
        path = folder / f"ct{k:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


def _paired_medians(candidate: Any, baseline: Any, rounds: int) -> tuple[float, float]:
    """Medians of alternating single runs: a burst of load from other processes hits both sides alike."""
    candidate(), baseline()  # warm-up (imports, caches, thread pools)
    cand, base = [], []
    for _ in range(rounds):
        cand.append(median_seconds(candidate, repeats=1, warmup=0))
        base.append(median_seconds(baseline, repeats=1, warmup=0))
    return statistics.median(cand), statistics.median(base)


def _baseline_load(paths: list[Path]) -> np.ndarray:
    import pydicom

    return np.stack([pydicom.dcmread(p).pixel_array for p in paths])


def _decode_all(datasets: list[Any], plugin: str) -> None:
    from pydicom.pixels import pixel_array

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for ds in datasets:
            pixel_array(ds, decoding_plugin=plugin)


def bench() -> list[dict[str, Any]]:
    """Load-only and full-pipeline rows at the synthetic and a clinical slice size, plus decoder rows."""
    import pydicom
    from mmclinic_imaging_dicom.config import CtDicomConfig
    from mmclinic_imaging_dicom.plugin import CtDicomPlugin
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

    from mmclinic.case import StudyRef
    from mmclinic.plugin_api import TaskSpec

    spec = TaskSpec("bench", ("imaging",), (), ("x",))
    plugin = CtDicomPlugin(CtDicomConfig())
    work = Path(tempfile.mkdtemp(prefix="mmclinic-bench-imaging-", dir=scratch_dir()))
    rows: list[dict[str, Any]] = []
    try:
        for label, size, slices, spacing, rounds in (
            ("64x64x32 (synth)", 64, 32, 5.0, 15),
            ("512x512x64 (clinical)", 512, 64, 0.7, 7),
        ):
            folder = work / f"s{size}"
            paths = _write_series(folder, size, slices, spacing)
            ref = StudyRef(folder=folder)
            baseline = lambda paths=paths: _baseline_load(paths)  # noqa: E731
            load, base = _paired_medians(lambda ref=ref: plugin.load_volume(ref, spec), baseline, rounds)
            full, base_full = _paired_medians(lambda ref=ref: plugin.load(ref, spec), baseline, rounds)
            common = "baseline: dcmread + pixel_array + np.stack of the same files"
            rows.append(
                {
                    "name": f"imaging load-only {label}",
                    "candidate_s": load,
                    "baseline_s": base,
                    "ratio": base / load,
                    "target": 0.7,
                    "higher_is_better": True,
                    "notes": f"header pass + rule selection + decode + SHA-256 of every file; {common}",
                }
            )
            rows.append(
                {
                    "name": f"imaging full preprocessing {label}",
                    "candidate_s": full,
                    "baseline_s": base_full,
                    "ratio": base_full / full,
                    "target": 0.25,
                    "higher_is_better": True,
                    "notes": f"load + RAS + anti-aliased resample to 5 mm + HU window + pad/crop to 64x64x32; {common}",
                }
            )

        for ts, candidate_plugin, baseline_plugin, target, note in (
            (RLELossless, "pylibjpeg", "pydicom", 5.0, "pylibjpeg-rle vs pydicom's own (numpy) RLE decoder"),
            (
                JPEG2000Lossless,
                "pylibjpeg",
                "pillow",
                0.9,
                "pylibjpeg-openjpeg vs Pillow, pydicom's default here: pydicom has no JPEG 2000 decoder of its own "
                "and both wrap OpenJPEG, so parity (within 10 %) is the honest target; pylibjpeg also does HTJ2K",
            ),
            (
                JPEGLSLossless,
                "pyjpegls",
                "pylibjpeg",
                1.0,
                "the plugin's JPEG-LS choice, pyjpegls (CharLS), vs pylibjpeg-libjpeg: pydicom has no JPEG-LS decoder "
                "of its own and already defaults to pyjpegls",
            ),
        ):
            folder = work / f"dec-{ts}"
            paths = _write_series(folder, 512, 12, 0.7, ts)
            datasets = [pydicom.dcmread(p) for p in paths]
            cand, base = _paired_medians(
                lambda d=datasets, c=candidate_plugin: _decode_all(d, c),
                lambda d=datasets, b=baseline_plugin: _decode_all(d, b),
                7,
            )
            rows.append(
                {
                    "name": f"imaging decode {ts.name} 512x512x12",
                    "candidate_s": cand,
                    "baseline_s": base,
                    "ratio": base / cand,
                    "target": target,
                    "higher_is_better": True,
                    "notes": note,
                }
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return rows


if __name__ == "__main__":  # pragma: no cover
    for row in bench():
        print(f"{row['name']:55s} ratio {row['ratio']:6.2f} (target {row['target']})  {row['notes']}")
