"""Job queue: claims, leases, retries, input errors, idempotency, a worker killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import func, select

from mmclinic.store import db as dbmod
from mmclinic.store import queue
from mmclinic.store.models import CaseRow, Job, PredictionRow
from mmclinic.store.testing import FakeEngine
from mmclinic.store.worker import process, run_worker


def _job(db, job_id: int) -> Job:
    with db.factory() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job


def _n_predictions(db) -> int:
    with db.factory() as s:
        return int(s.scalar(select(func.count()).select_from(PredictionRow)) or 0)


def test_duplicate_submission_returns_the_same_job_and_one_prediction(db, submit):
    first = submit("same note")
    again = submit("same note")
    assert again.duplicate and not first.duplicate
    assert (again.job.id, again.case.id) == (first.job.id, first.case.id)
    other_model = submit("same note", model="tumor-risk-alias")
    assert other_model.job.id != first.job.id and other_model.case.id == first.case.id
    engine = FakeEngine()
    stats = run_worker(db.factory, engine, "w1", poll_s=0.01, until_idle=True)
    assert stats.done == 2
    assert engine.predicted == 1  # the second job found the prediction of the same inputs + weights
    assert _n_predictions(db) == 1
    assert _job(db, first.job.id).prediction_id == _job(db, other_model.job.id).prediction_id
    with db.factory() as s:
        assert s.scalar(select(func.count()).select_from(CaseRow)) == 1
    # New weights are a new model: a second prediction is legitimate.
    with dbmod.transaction(db.factory) as s:
        s.get(Job, first.job.id).state = "queued"  # type: ignore[union-attr]
    run_worker(db.factory, FakeEngine(weights_sha256="e" * 64), "w2", poll_s=0.01, until_idle=True)
    assert _n_predictions(db) == 2


def test_input_error_fails_the_job_with_its_reason_and_the_worker_goes_on(db, submit):
    bad = submit("BAD note")
    good = submit("fine note")
    stats = run_worker(db.factory, FakeEngine(), "w", poll_s=0.01, until_idle=True)
    assert (stats.failed, stats.done) == (1, 1)
    job = _job(db, bad.job.id)
    assert (job.state, job.error_reason, job.attempts) == ("failed", "notes.fake_bad", 1)
    assert _job(db, good.job.id).state == "done"


def test_engine_errors_are_retried_a_bounded_number_of_times(db, submit):
    crash = submit("CRASH please", max_attempts=3)
    stats = run_worker(db.factory, FakeEngine(), "w", poll_s=0.01, backoff_s=0.0, until_idle=True)
    assert (stats.retried, stats.failed) == (2, 1)
    job = _job(db, crash.job.id)
    assert (job.state, job.attempts, job.error_reason) == ("failed", 3, "job.engine_error")
    assert "fake engine crash" in (job.error_detail or "")
    assert _n_predictions(db) == 0


def test_a_lost_lease_cannot_complete(db, submit):
    res = submit("lease")
    a = queue.claim(db.factory, "A", lease_s=0.05)
    assert a is not None and queue.claim(db.factory, "B", lease_s=0.05) is None
    time.sleep(0.1)
    b = queue.claim(db.factory, "B", lease_s=30)
    assert b is not None and (b.job_id, b.attempt) == (res.job.id, 2)
    assert process(db.factory, FakeEngine(), a, "A", lease_s=30) == "lost"
    assert not queue.heartbeat(db.factory, a, 30)
    assert _n_predictions(db) == 0
    assert process(db.factory, FakeEngine(), b, "B", lease_s=30) == "done"
    assert _n_predictions(db) == 1
    job = _job(db, res.job.id)
    assert (job.state, job.worker_id, job.attempts) == ("done", "B", 2)


def test_expired_lease_on_the_last_attempt_fails_the_job(db, submit):
    res = submit("last", max_attempts=1)
    assert queue.claim(db.factory, "A", lease_s=0.01) is not None
    time.sleep(0.05)
    assert queue.claim(db.factory, "B", lease_s=30) is None
    job = _job(db, res.job.id)
    assert (job.state, job.error_reason) == ("failed", "job.lease_expired")


def test_concurrent_claims_never_hand_out_a_job_twice(db, submit):
    ids = {submit(f"note {i}").job.id for i in range(12)}
    got: list[int] = []
    lock = threading.Lock()

    def claimer(name: str) -> None:
        while (c := queue.claim(db.factory, name, lease_s=60)) is not None:
            with lock:
                got.append(c.job_id)

    threads = [threading.Thread(target=claimer, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == sorted(ids)


def test_worker_killed_mid_job_is_reclaimed_and_finishes_once(db, submit, tmp_path: Path):
    res = submit("slow one")
    env = dict(
        os.environ,
        MMCLINIC_DATABASE_URL=db.url,
        MMCLINIC_DATA_DIR=str(tmp_path),
        MMCLINIC_FAKE_ENGINE_SLEEP="120",
        MMCLINIC_CONFIG=str(tmp_path / "none.toml"),
    )
    cli = Path(sys.executable).with_name("mmclinic")
    proc = subprocess.Popen(
        [
            str(cli),
            "worker",
            "--engine-factory",
            "mmclinic.store.testing:fake_engine_factory",
            "--lease-seconds",
            "1",
            "--poll-seconds",
            "0.05",
            "--worker-id",
            "doomed",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while _job(db, res.job.id).state != "running":
            assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "worker never claimed the job"
            time.sleep(0.05)
        first_lease = _job(db, res.job.id).lease_until
        time.sleep(1.5)  # longer than the lease: only the heartbeat keeps it alive
        held = _job(db, res.job.id)
        assert (held.state, held.worker_id) == ("running", "doomed") and held.lease_until > first_lease
        assert queue.claim(db.factory, "thief", lease_s=60) is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _job(db, res.job.id).state == "running"  # nobody finished it
    engine = FakeEngine()
    deadline = time.monotonic() + 10
    while run_worker(db.factory, engine, "rescuer", lease_s=30, poll_s=0.05, until_idle=True).done == 0:
        assert time.monotonic() < deadline, "the job was never reclaimed"
        time.sleep(0.2)
    job = _job(db, res.job.id)
    assert (job.state, job.attempts, job.worker_id) == ("done", 2, "rescuer")
    assert engine.predicted == 1 and _n_predictions(db) == 1
    assert run_worker(db.factory, engine, "again", poll_s=0.01, until_idle=True).done == 0
