"""Run the benchmarks: ``python -m bench.run [--only NAME]``; prints a table and merges bench/results.json.

Each ``bench/bench_<topic>.py`` exposes ``bench() -> list[dict]`` with rows ``{name, candidate_s,
baseline_s, ratio, target, higher_is_better, notes}``; ``ratio = baseline_s / candidate_s`` (both medians
measured in the same process), and a row passes when the ratio meets its target.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import traceback
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results.json"
ROW_KEYS = ("name", "candidate_s", "baseline_s", "ratio", "target", "higher_is_better", "notes")


def discover() -> list[str]:
    """Topic names of every ``bench_<topic>.py``, sorted."""
    return sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))


def passes(row: dict[str, Any]) -> bool:
    """Whether a row's ratio meets its target."""
    ratio, target = float(row["ratio"]), float(row["target"])
    return ratio >= target if row.get("higher_is_better", True) else ratio <= target


def _torch_version() -> str:
    try:
        return version("torch")
    except PackageNotFoundError:
        return "not installed"


def run(topics: list[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of the given topics, plus the names of topics that failed to run."""
    rows: list[dict[str, Any]] = []
    failed = []
    for topic in topics:
        try:
            module = importlib.import_module(f"bench.bench_{topic}")
            for row in module.bench():
                missing = [k for k in ROW_KEYS if k not in row]
                if missing:
                    raise ValueError(f"row {row.get('name')!r} lacks {missing}")
                rows.append(row)
        except Exception:  # one broken benchmark must not hide the others' numbers
            traceback.print_exc()
            failed.append(topic)
    return rows, failed


def print_table(rows: list[dict[str, Any]]) -> None:
    """Fixed-width table: name, candidate s, baseline s, ratio, target, pass/miss."""
    header = f"{'name':<34} {'candidate s':>12} {'baseline s':>12} {'ratio':>8} {'target':>8}  result"
    print(header)
    print("-" * len(header))
    for r in rows:
        cmp = ">=" if r.get("higher_is_better", True) else "<="
        print(
            f"{r['name']:<34} {r['candidate_s']:>12.4f} {r['baseline_s']:>12.4f} {r['ratio']:>8.2f} "
            f"{cmp}{r['target']:>6.2f}  {'pass' if passes(r) else 'MISS'}"
        )
        if r.get("notes"):
            print(f"    {r['notes']}")


def merge_results(rows: list[dict[str, Any]], path: Path = RESULTS) -> dict[str, Any]:
    """Merge rows by name into ``results.json`` with date, machine and torch version."""
    doc: dict[str, Any] = {"rows": {}}
    if path.is_file():
        try:
            doc = json.loads(path.read_text())
            doc.setdefault("rows", {})
        except (ValueError, OSError):
            doc = {"rows": {}}
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "torch_version": _torch_version(),
    }
    for r in rows:
        doc["rows"][r["name"]] = {**r, "passed": passes(r), **meta}
    path.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    return doc


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; exit 1 when a benchmark failed to run (a missed target is reported, not fatal)."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--only", help="run only this topic (bench_<topic>.py), e.g. 'synth'")
    args = parser.parse_args(argv)
    topics = discover()
    if args.only:
        wanted = args.only.removeprefix("bench_").removesuffix(".py")
        if wanted not in topics:
            print(f"no benchmark named {args.only!r}; available: {', '.join(topics)}", file=sys.stderr)
            return 2
        topics = [wanted]
    rows, failed = run(topics)
    print_table(rows)
    if rows:
        merge_results(rows)
        print(f"\nwrote {RESULTS.relative_to(BENCH_DIR.parent)}")
    if failed:
        print(f"failed to run: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
