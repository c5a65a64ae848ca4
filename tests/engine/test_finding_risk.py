"""Each finding's malignancy risk is the case's risk were that finding its only lesion (encoder ``isolate``)."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest
import torch
from test_engine import make_checkpoint
from toy_plugins import GRID, toy_registry

from mmclinic.case import Case
from mmclinic.engine import InferenceEngine
from mmclinic.model.detection import finding_risks

BLOB_A, BLOB_B = (1, 1, 1), (6, 6, 2)


def _case(case_id: str, blobs: dict[tuple[int, int, int], float]) -> Case:
    vol = np.zeros(GRID)
    for ijk, value in blobs.items():
        vol[ijk] = value
    return Case(case_id=case_id, patient_id="p", inputs={"imaging": {"volume": vol}, "tabular": {"a": 0.7, "b": -0.2}})


def _isolate_by_blanking(self: torch.nn.Module, batch: dict[str, torch.Tensor], suppress: torch.Tensor) -> object:
    """The toy encoder's isolate: suppressed voxels become background (0) in the volume itself."""
    n = suppress.shape[0]
    vol = batch["volume"].expand(n, -1, -1, -1, -1).masked_fill(suppress, 0.0)
    return self({"volume": vol, "present": batch["present"].expand(n)})


@pytest.fixture()
def engine(tmp_path: Path) -> InferenceEngine:
    reg = toy_registry()
    eng = InferenceEngine.load(make_checkpoint(tmp_path / "m.pt", reg, lesion_head=True), device="cpu", registry=reg)
    # A risk that clearly depends on the image: strong toy image features, a steep head.
    with torch.no_grad():
        eng.model.encoders["imaging"].conv.weight.mul_(10.0)
        eng.model.head.weight.mul_(5.0)
    return eng


def test_each_finding_gets_the_risk_of_the_case_with_it_alone(engine: InferenceEngine) -> None:
    enc = engine.model.encoders["imaging"]
    enc.isolate = types.MethodType(_isolate_by_blanking, enc)
    (both,) = engine.predict([_case("two", {BLOB_A: 1.0, BLOB_B: 0.8})])
    alone_a, alone_b = engine.predict([_case("a", {BLOB_A: 1.0}), _case("b", {BLOB_B: 0.8})])
    assert [f.center_voxel for f in both.findings] == [BLOB_A, BLOB_B]  # A is the more confident
    risk_a, risk_b = (f.malignancy_risk for f in both.findings)
    assert risk_a == pytest.approx(alone_a.malignancy_risk, abs=1e-5)
    assert risk_b == pytest.approx(alone_b.malignancy_risk, abs=1e-5)
    assert abs(risk_a - risk_b) > 1e-3 and abs(risk_a - both.malignancy_risk) > 1e-3  # the test can tell them apart
    # A single finding carries the case risk (nothing to isolate).
    assert [f.malignancy_risk for f in alone_b.findings] == [alone_b.malignancy_risk]
    # Deterministic: the same case gives the same finding risks, bit for bit.
    (again,) = engine.predict([_case("two", {BLOB_A: 1.0, BLOB_B: 0.8})])
    assert [f.malignancy_risk for f in again.findings] == [risk_a, risk_b]


def test_an_encoder_that_cannot_isolate_shares_the_case_risk_by_confidence(engine: InferenceEngine) -> None:
    assert not hasattr(engine.model.encoders["imaging"], "isolate")
    (both,) = engine.predict([_case("two", {BLOB_A: 1.0, BLOB_B: 0.8})])
    assert len(both.findings) == 2
    want = finding_risks(both.malignancy_risk, [f.confidence for f in both.findings])
    assert [f.malignancy_risk for f in both.findings] == want
