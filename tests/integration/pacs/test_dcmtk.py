"""dcmtk echoscu/storescu against the listener → study complete → job → (real engine) prediction and SR."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from mmclinic.pacs.service import PacsService
from mmclinic.pacs.testing import SCU_AE, Store, make_settings
from mmclinic.store.models import Instance, Job, PredictionRow

pytestmark = [pytest.mark.integration, pytest.mark.pacs]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120)


def test_dcmtk_scu_to_listener_to_prediction(
    store: Store,
    study_files: list[Path],
    require_tool: Callable[[str], str],
    require: Callable[[bool, str], None],
) -> None:
    echoscu, storescu = require_tool("echoscu"), require_tool("storescu")
    svc = PacsService(make_settings(store.data_dir, study_quiet_seconds=0.0), store.factory)
    svc.start()
    port = str(svc.scp.port)
    try:
        assert _run(echoscu, "-aet", SCU_AE, "-aec", "MMCLINIC", "127.0.0.1", port).returncode == 0
        assert _run(echoscu, "-aet", "INTRUDER", "-aec", "MMCLINIC", "127.0.0.1", port).returncode != 0
        res = _run(storescu, "-aet", SCU_AE, "-aec", "MMCLINIC", "127.0.0.1", port, *map(str, study_files))
        assert res.returncode == 0, res.stderr
        assert _run(echoscu, "-aet", SCU_AE, "-aec", "MMCLINIC", "127.0.0.1", port).returncode == 0
    finally:
        svc.stop()
    with store.factory() as s:
        assert len(s.scalars(select(Instance)).all()) == len(study_files)
    assert svc.tick(now=1e12).jobs_queued == 1

    from mmclinic.registry import get_registry

    weights = get_registry().get("task", "tumor-risk").weights_path()  # type: ignore[attr-defined]
    require(weights is not None, "the tumor-risk plugin ships no weights yet: cannot run the real engine")
    from mmclinic.engine import InferenceEngine
    from mmclinic.store.worker import run_worker

    engine = InferenceEngine.load(model="tumor-risk", device="cpu")
    stats = run_worker(store.factory, engine, "it-worker", poll_s=0.01, backoff_s=0.0, until_idle=True)
    assert stats.done == 1, stats
    with store.factory() as s:
        job = s.scalars(select(Job)).one()
        assert job.state == "done" and s.get(PredictionRow, job.prediction_id) is not None
    assert svc.tick().exported == 1
    assert svc.outbox.sent() or svc.outbox.pending()
