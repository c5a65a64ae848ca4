"""The tumor-risk task plugin: discovery, spec, SR content codes, bundled weights and model card."""

from __future__ import annotations

import re

import pytest

from mmclinic.case import Finding, Prediction, Provenance, sha256_file
from mmclinic.plugin_api import TaskPlugin
from mmclinic.registry import get_registry


def _task() -> TaskPlugin:
    rec = [r for r in get_registry().records if r.kind == "task" and r.name == "tumor-risk"]
    assert rec and rec[0].status == "ok", rec
    assert isinstance(rec[0].plugin, TaskPlugin)
    return rec[0].plugin


def test_spec_matches_the_records_and_ct_geometry() -> None:
    from mmclinic.synth import RECORD_COLUMNS

    spec = _task().spec()
    assert spec.required_modalities == ()
    assert set(spec.optional_modalities) == {"imaging", "notes", "tabular"}
    assert spec.labels == ("tumor_present", "malignant")
    assert spec.imaging.spacing_mm == (5.0, 5.0, 5.0) and spec.imaging.size == (64, 64, 32)
    assert spec.imaging.hu_window == (-1000.0, 400.0)
    names = [f.name for f in spec.tabular_schema]
    assert names == [c for c in RECORD_COLUMNS if c != "case_id" and not c.endswith("_unit")]
    by = {f.name: f for f in spec.tabular_schema}
    assert by["cea"].unit == "ng/mL" and by["hemoglobin"].unit == "g/dL" and by["wbc"].unit == "10^9/L"
    assert by["smoking_status"].categories == ("never", "former", "current")
    for f in spec.tabular_schema:
        if f.type == "numeric":
            assert f.min is not None and f.max is not None and f.min < f.max


def _prediction() -> Prediction:
    prov = Provenance("ab" * 32, "tumor-risk", "0.1.0", {}, "0.1.0", "", {}, "cpu", {}, ("imaging",))
    findings = (
        Finding((10.0, -20.5, 30.0), 14.26, 0.9, 0.62, (30, 28, 16)),
        Finding((-50.0, 5.0, 12.5), 7.0, 0.4, 0.2756, None),
    )
    return Prediction("C1", "tumor-risk", 0.93, 0.62, findings, {}, prov)


def test_sr_content_codes_and_values() -> None:
    sr = _task().sr_content(_prediction())
    assert sr["title"] == ("126000", "DCM", "Imaging Measurement Report")
    assert sr["case_measurements"][0]["concept"] == ("111047", "DCM", "Probability of cancer")
    assert sr["case_measurements"][0]["value"] == 0.62
    g1, g2 = sr["findings"]
    assert g1["finding_type"] == (("121071", "DCM", "Finding"), ("27925004", "SCT", "Nodule"))
    assert g1["finding_site"] == (("363698007", "SCT", "Finding Site"), ("39607008", "SCT", "Lung"))
    diam, prob = g1["measurements"]
    assert diam["concept"] == ("81827009", "SCT", "Diameter") and diam["unit"][0] == "mm" and diam["value"] == 14.3
    assert prob["value"] == 0.62
    assert g1["center_mm"] == [10.0, -20.5, 30.0] and g2["center_voxel"] is None
    assert g1["tracking_id"] != g2["tracking_id"]
    assert sr["algorithm"]["weights_sha256"] == "ab" * 32


def test_bundled_weights_load_and_model_card_names_their_sha256() -> None:
    task = _task()
    weights, card = task.weights_path(), task.model_card_path()
    if weights is None or card is None:
        pytest.fail("tumor-risk must ship weights and a model card")
    assert weights.stat().st_size <= 20 * 1024 * 1024
    sha = sha256_file(weights)
    text = card.read_text()
    assert sha in text
    assert re.search(r"not .*clinical decision", text, re.IGNORECASE)
    from mmclinic.engine import InferenceEngine

    engine = InferenceEngine.load("tumor-risk", device="cpu")
    assert engine.weights_sha256 == sha and engine.task_name == "tumor-risk"
