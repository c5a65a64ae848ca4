"""Cohort result tables (Parquet or CSV, chosen by extension), written atomically, and the metrics report."""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mmclinic.batch.journal import Failure
from mmclinic.durable import fsync_path
from mmclinic.errors import InputError

FORMATS = (".parquet", ".csv")

# Column order of the result table; JSON columns hold nested values as compact JSON text.
RESULT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("case_id", "str"),
    ("row", "int"),
    ("malignancy_risk", "float"),
    ("tumor_probability", "float"),
    ("n_findings", "int"),
    ("findings", "json"),
    ("modality_contributions", "json"),
    ("modalities_used", "str"),
    ("task", "str"),
    ("task_version", "str"),
    ("weights_sha256", "str"),
    ("input_fingerprint", "str"),
    ("input_fingerprints", "json"),
    ("plugin_versions", "json"),
    ("mmclinic_version", "str"),
    ("preprocessing_hash", "str"),
    ("device", "str"),
    ("timings_ms", "json"),
)
FAILURE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("case_id", "str"),
    ("row", "int"),
    ("reason", "str"),
    ("detail", "str"),
    ("retryable", "bool"),
)


def check_output_path(out: Path) -> str:
    """The output format (".parquet" or ".csv"); InputError for anything else."""
    suffix = out.suffix.lower()
    if suffix not in FORMATS:
        raise InputError("batch.bad_output", f"{out.name}: the output must end in .parquet or .csv")
    return suffix


def sidecar(out: Path, name: str, suffix: str | None = None) -> Path:
    """A file beside the output: ``results.parquet`` → ``results.<name><suffix>``."""
    return out.with_name(f"{out.stem}.{name}{suffix if suffix is not None else out.suffix}")


def _json(v: Any) -> str:
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


def result_row(row: int, input_fp: str, pred: dict[str, Any], labels: dict[str, float]) -> dict[str, Any]:
    """One output row from a stored ``Prediction.to_dict()``."""
    prov = pred["provenance"]
    out: dict[str, Any] = {
        "case_id": pred["case_id"],
        "row": row,
        "malignancy_risk": float(pred["malignancy_risk"]),
        "tumor_probability": float(pred["tumor_probability"]),
        "n_findings": len(pred["findings"]),
        "findings": _json(pred["findings"]),
        "modality_contributions": _json(pred["modality_contributions"]),
        "modalities_used": ";".join(prov["modalities_present"]),
        "task": pred["task"],
        "task_version": prov["task_version"],
        "weights_sha256": prov["weights_sha256"],
        "input_fingerprint": input_fp,
        "input_fingerprints": _json(prov["input_fingerprints"]),
        "plugin_versions": _json(prov["plugin_versions"]),
        "mmclinic_version": prov["mmclinic_version"],
        "preprocessing_hash": prov["preprocessing_hash"],
        "device": prov["device"],
        "timings_ms": _json(prov["timings_ms"]),
    }
    for label, value in labels.items():  # the case's labels: only the task's were read from the manifest
        out[label] = float(value)
    return out


def failure_row(f: Failure) -> dict[str, Any]:
    """One row of the failures table."""
    return {"case_id": f.key.case_id, "row": f.row, "reason": f.reason, "detail": f.detail, "retryable": not f.final}


def write_table(
    path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], labels: Sequence[str] = ()
) -> None:
    """Write rows to Parquet or CSV through a temporary file + rename: readers never see a half table.

    ``labels``: the task's label names, appended as float columns (in that order) when some row has one.
    """
    cols = list(columns)
    for label in labels:
        if any(label in r for r in rows):
            cols.append((label, "float"))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        if path.suffix.lower() == ".parquet":
            os.close(fd)
            _write_parquet(tmp, rows, cols)
        else:
            with os.fdopen(fd, "w", newline="", encoding="utf-8") as fh:
                w = csv.DictWriter(fh, fieldnames=[c for c, _ in cols], extrasaction="ignore")
                w.writeheader()
                for r in rows:
                    # repr() of a float is its shortest exact form: CSV keeps results bit-exact too.
                    w.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
        with tmp.open("rb+") as fh:
            os.fsync(fh.fileno())
        tmp.chmod(0o644)  # mkstemp creates 0600; a results table is meant to be shared like any output
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def _write_parquet(path: Path, rows: Sequence[dict[str, Any]], cols: Sequence[tuple[str, str]]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = {"str": pa.string(), "json": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_()}
    schema = pa.schema([(name, types[kind]) for name, kind in cols])
    table = pa.Table.from_pylist([{c: r.get(c) for c, _ in cols} for r in rows], schema=schema)
    pq.write_table(table, path)


def write_report(out: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """``<stem>.metrics.json`` and ``<stem>.metrics.md`` beside the output, in ``mmclinic evaluate``'s format."""
    from mmclinic.training.report import markdown

    json_path, md_path = sidecar(out, "metrics", ".json"), sidecar(out, "metrics", ".md")
    text = json.dumps(report, indent=2, default=lambda v: v.item() if hasattr(v, "item") else str(v))
    _atomic_text(json_path, text)
    md = markdown(report).replace("Plots: `roc.png`, `reliability.png`, `ablation.png`.", "")
    _atomic_text(md_path, md)
    return json_path, md_path


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.part")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
