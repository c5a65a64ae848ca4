"""The API + queue + worker with the real ``mmclinic.engine`` and the installed ``tumor-risk`` plugin."""

from __future__ import annotations

import pytest
from api_testkit import build_api

from mmclinic.errors import MmclinicError
from mmclinic.store.testing import require_all
from mmclinic.store.worker import run_worker


def _real_engine():
    try:
        from mmclinic.engine import InferenceEngine

        return InferenceEngine.load(model="tumor-risk", device="cpu")
    except (ImportError, MmclinicError) as exc:
        reason = f"real engine unavailable: {getattr(exc, 'reason', type(exc).__name__)}: {exc}"
        if require_all():
            pytest.fail(reason)
        pytest.skip(reason)


@pytest.mark.integration
@pytest.mark.slow
def test_real_engine_end_to_end(tmp_path):
    engine = _real_engine()
    gen = build_api("sqlite", tmp_path)
    api = next(gen)
    try:
        good = api.submit(
            "int1",
            note="Spiculated 18 mm nodule in the right upper lobe; heavy smoker.",
            tabular={"age": 67, "sex": "M", "pack_years": 40},
        )
        bad = api.submit("int1", note="follow-up", tabular={"age": 500}, patient_id="p-bad")
        stats = run_worker(api.factory, engine, "real", poll_s=0.01, backoff_s=0.0, until_idle=True)
        assert stats.done == 1 and stats.failed == 1
        status = api.client.get(f"/api/v1/jobs/{good['job_id']}", headers=api.h("int1")).json()
        detail = api.client.get(f"/api/v1/predictions/{status['prediction_id']}", headers=api.h("clin1")).json()
        assert 0.0 <= detail["malignancy_risk"] <= 1.0 and 0.0 <= detail["tumor_probability"] <= 1.0
        assert detail["provenance"]["weights_sha256"] == engine.weights_sha256
        assert set(detail["provenance"]["modalities_present"]) == {"notes", "tabular"}
        failed = api.client.get(f"/api/v1/jobs/{bad['job_id']}", headers=api.h("int1")).json()
        assert failed["state"] == "failed" and failed["error_reason"] and failed["prediction_id"] is None
    finally:
        gen.close()
