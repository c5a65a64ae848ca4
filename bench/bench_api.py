"""API benchmark: GET prediction vs /healthz throughput of one running uvicorn app, and p95 latency at 1 / 4 clients."""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench._timing import median_seconds

REPEATS = int(os.environ.get("MMCLINIC_BENCH_REPEATS", "5"))
BATCH = 50  # requests per timed call
LATENCY_REQUESTS = 200  # per latency measurement, spread over the clients


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _seed(url: str) -> tuple[str, int]:
    """A migrated database with one admin token and one prediction; returns (token, prediction id)."""
    from mmclinic.store import db as dbmod
    from mmclinic.store import users
    from mmclinic.store.cases import CaseInput, NoteInput, submit
    from mmclinic.store.models import Job
    from mmclinic.store.testing import FakeEngine
    from mmclinic.store.worker import run_worker

    engine = dbmod.create_db_engine(url)
    dbmod.upgrade(engine)
    factory = dbmod.session_factory(engine)
    with dbmod.transaction(factory) as s:
        token = users.issue_token(s, users.create_user(s, "bench", "clinician", "s1"))[1]
        job_id = submit(
            s, CaseInput("p1", "s1", notes=(NoteInput(b"bench note"),), tabular={"age": 60}), "tumor-risk"
        ).job.id
    run_worker(factory, FakeEngine(), "bench", poll_s=0.01, until_idle=True)
    with factory() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.prediction_id is not None
        pid = job.prediction_id
    engine.dispose()
    return token, pid


def _latencies(base: str, path: str, headers: dict[str, str], clients: int) -> list[float]:
    out: list[float] = []
    lock = threading.Lock()
    per_client = LATENCY_REQUESTS // clients

    def run() -> None:
        local = []
        with httpx.Client(base_url=base, headers=headers) as c:
            c.get(path).raise_for_status()  # warm the connection
            for _ in range(per_client):
                t0 = time.perf_counter()
                c.get(path).raise_for_status()
                local.append(time.perf_counter() - t0)
        with lock:
            out.extend(local)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _p95(xs: list[float]) -> float:
    return statistics.quantiles(xs, n=20)[-1]


def bench() -> list[dict[str, Any]]:
    work = Path(
        tempfile.mkdtemp(
            prefix="bench-api-",
            dir=Path(__file__).parent / "_work" if (Path(__file__).parent / "_work").is_dir() else None,
        )
    )
    url = f"sqlite:///{work / 'bench.db'}"
    token, pid = _seed(url)
    port = _free_port()
    env = dict(os.environ, MMCLINIC_DATABASE_URL=url, MMCLINIC_DATA_DIR=str(work), MMCLINIC_CONFIG=str(work / "x.toml"))
    cli = Path(sys.executable).with_name("mmclinic")
    server = subprocess.Popen(
        [str(cli), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"}
    pred_path = f"/api/v1/predictions/{pid}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {server.stderr.read().decode() if server.stderr else ''}")
            time.sleep(0.2)
        with httpx.Client(base_url=base, headers=headers) as c:

            def batch(path: str) -> None:
                for _ in range(BATCH):
                    c.get(path).raise_for_status()

            health_s = median_seconds(lambda: batch("/healthz"), repeats=REPEATS)
            pred_s = median_seconds(lambda: batch(pred_path), repeats=REPEATS)
        rows = [
            {
                "name": "api.get_prediction_vs_healthz_rps",
                "candidate_s": pred_s / BATCH,
                "baseline_s": health_s / BATCH,
                "ratio": health_s / pred_s,
                "target": 0.3,
                "higher_is_better": True,
                "notes": f"1 client, keep-alive; prediction {BATCH / pred_s:.0f} req/s vs healthz "
                f"{BATCH / health_s:.0f} req/s (auth + audited SQLite transaction per GET)",
            }
        ]
        for clients in (1, 4):
            h = _latencies(base, "/healthz", headers, clients)
            p = _latencies(base, pred_path, headers, clients)
            rows.append(
                {
                    "name": f"api.p95_latency_{clients}_clients",
                    "candidate_s": _p95(p),
                    "baseline_s": _p95(h),
                    "ratio": _p95(h) / _p95(p),
                    "target": 0.1,
                    "higher_is_better": True,
                    "notes": f"p95 GET prediction {_p95(p) * 1000:.1f} ms vs /healthz {_p95(h) * 1000:.1f} ms "
                    f"at {clients} concurrent client(s), {LATENCY_REQUESTS} requests each",
                }
            )
        return rows
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    for row in bench():
        print(row)
