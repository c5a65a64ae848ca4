"""C-STORE receive throughput: the mmclinic listener vs dcmtk ``storescp``, same files, one association each.

Both receivers write every instance to disk in the same scratch folder (bench/_work, a real disk,
not tmpfs: the listener's fsync of file + folder and its database commit before Success are part of
what is measured; storescp does not fsync). The sender is dcmtk ``storescu`` in both cases, so the
sender's cost is identical. Each timed run goes to a fresh receiver (a second run to the same
listener would hit the "same bytes again" shortcut and measure nothing). The two receivers are
timed turn about, so a shared machine's drift reaches both alike.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._timing import interleaved_medians

REPEATS = 5
# dcmtk leaves Nagle's algorithm on unless TCP_NODELAY is set; with it on, every C-STORE waits for a
# delayed ACK (~40 ms) and both timings measure the TCP stack instead of the receivers.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}


def _scratch() -> Path:
    d = Path(__file__).resolve().parent / "_work"
    d.mkdir(exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="bench-pacs-", dir=d))


def _study(root: Path, rows: int, slices: int) -> list[Path]:
    from mmclinic.synth import SynthSettings, generate_cohort

    out = root / f"study-{rows}"
    generate_cohort(SynthSettings(cases=1, seed=3, sites=1, rows=rows, cols=rows, slices=slices), out)
    return sorted((out / "cases").glob("*/dicom/*.dcm"))


def _send(port: int, files: list[Path], called: str) -> None:
    cmd = ["storescu", "-aet", "TESTSCU", "-aec", called, "127.0.0.1", str(port), *map(str, files)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300, env=DCMTK_ENV)


def _mmclinic_runs(root: Path, files: list[Path], n: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """``n`` fresh listeners started up front; each call sends the study to the next one."""
    from mmclinic.pacs.service import PacsService
    from mmclinic.pacs.testing import make_settings, open_store

    services = []
    for k in range(n):
        st = open_store(root / f"mm{k}")
        svc = PacsService(make_settings(st.data_dir, study_quiet_seconds=1e9), st.factory)
        svc.scp.start()
        services.append(svc)
    queue = list(services)

    def run() -> None:
        _send(queue.pop(0).scp.port, files, "MMCLINIC")

    def close() -> None:
        for svc in services:
            svc.stop()

    return run, close


def _storescp_runs(root: Path, files: list[Path], n: int) -> tuple[Callable[[], None], Callable[[], None]]:
    from mmclinic.pacs.testing import free_port

    procs = []
    for k in range(n):
        out = root / f"scp{k}"
        out.mkdir()
        port = free_port()
        cmd = ["storescp", "-aet", "STORESCP", "-od", str(out), str(port)]
        procs.append((subprocess.Popen(cmd, env=DCMTK_ENV), port))
    time.sleep(0.5)  # let them bind
    queue = [p for _, p in procs]

    def run() -> None:
        _send(queue.pop(0), files, "STORESCP")

    def close() -> None:
        for proc, _ in procs:
            proc.terminate()
            proc.wait(timeout=10)

    return run, close


def _row(name: str, files: list[Path], root: Path, notes: str) -> dict[str, Any]:
    n = REPEATS + 1  # + warm-up
    mm_run, mm_close = _mmclinic_runs(root, files, n)
    try:
        scp_run, scp_close = _storescp_runs(root, files, n)
        try:
            cand, base = interleaved_medians(mm_run, scp_run, repeats=REPEATS, warmup=1)
        finally:
            scp_close()
    finally:
        mm_close()
    mb = sum(f.stat().st_size for f in files) / 1e6
    return {
        "name": name,
        "candidate_s": cand,
        "baseline_s": base,
        "ratio": base / cand,
        "target": 0.25,
        "higher_is_better": True,
        "notes": f"{len(files)} inst, {mb:.1f} MB; {len(files) / cand:.0f} vs {len(files) / base:.0f} inst/s; {notes}",
    }


def bench() -> list[dict[str, Any]]:
    """Two rows: clinical-size 512×512 slices (the target) and tiny 64×64 slices (per-instance overhead)."""
    if shutil.which("storescu") is None or shutil.which("storescp") is None:
        raise RuntimeError("dcmtk (storescu/storescp) is not installed")
    root = _scratch()
    try:
        big = _study(root, 512, 48)
        small = _study(root, 64, 32)
        return [
            _row("pacs_cstore_receive_512", big, root / "a", "fsync file+dir, SQLite WAL commit (NORMAL) per instance"),
            _row("pacs_cstore_receive_64", small, root / "b", "per-instance overhead dominates; informational"),
        ]
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    for r in bench():
        print(r)
