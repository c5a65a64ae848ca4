"""Inference engine on toy plugins: provenance, determinism, batching, findings in mm, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from toy_plugins import AFFINE, GRID, toy_registry

from mmclinic.case import Case, sha256_file
from mmclinic.engine import InferenceEngine
from mmclinic.engine.checkpoint import save_checkpoint
from mmclinic.engine.factory import model_meta, new_model, task_parts
from mmclinic.errors import InputError
from mmclinic.registry import Registry


def make_checkpoint(path: Path, reg: Registry, lesion_head: bool = False, modalities: tuple[str, ...] = ()) -> Path:
    torch.manual_seed(0)
    parts = task_parts(reg, "toy-task", modalities or None)
    model = new_model(parts, d_model=16, n_heads=2, n_layers=1)
    if lesion_head:
        enc = model.encoders["imaging"]
        with torch.no_grad():  # lesion logit = 10 * (intensity - 0.5): a bright blob is a lesion
            enc.lesion.weight.fill_(10.0)  # type: ignore[union-attr, operator]
            enc.lesion.bias.fill_(-5.0)  # type: ignore[union-attr, operator]
            model.lesion_bias.fill_(0.0)  # no rare-lesion prior: the head above is already set
    model.temperature.fill_(1.5)  # type: ignore[operator]
    save_checkpoint(path, model, model_meta(parts, model, training={"note": "random init"}))
    return path


def _case(i: int, blob: tuple[int, int, int] | None = None, tabular: bool = True, imaging: bool = True) -> Case:
    rng = np.random.default_rng(i)
    vol = rng.normal(0, 0.05, GRID)
    if blob is not None:
        vol[blob] = 1.0
    inputs: dict[str, object] = {}
    if imaging:
        inputs["imaging"] = {"volume": vol}
    if tabular:
        inputs["tabular"] = {"a": float(rng.normal()), "b": float(rng.normal())}
    return Case(case_id=f"c{i}", patient_id=f"p{i}", inputs=inputs)


@pytest.fixture()
def ckpt(tmp_path: Path) -> Path:
    return make_checkpoint(tmp_path / "model.pt", toy_registry(), lesion_head=True)


def test_prediction_carries_full_provenance(ckpt: Path) -> None:
    reg = toy_registry()
    engine = InferenceEngine.load(ckpt, device="cpu", registry=reg)
    assert engine.task_name == "toy-task" and engine.device.type == "cpu"
    assert engine.weights_sha256 == sha256_file(ckpt)
    (pred,) = engine.predict([_case(1)])
    prov = pred.provenance
    assert prov.weights_sha256 == sha256_file(ckpt)
    assert prov.task == "toy-task" and prov.task_version == "0.1.0"
    assert prov.plugin_versions == {"toy-imaging": "1.2.0", "toy-tabular": "0.4.1"}
    assert prov.modalities_present == ("imaging", "tabular")
    assert set(prov.input_fingerprints) == {"imaging:volume", "tabular:row"}
    assert len(prov.preprocessing_hash) == 64 and prov.device == "cpu"
    assert {"load.imaging", "load.tabular", "precompute", "encode", "fusion", "postprocess"} <= set(prov.timings_ms)
    assert 0.0 < pred.malignancy_risk < 1.0 and 0.0 < pred.tumor_probability < 1.0
    assert set(pred.modality_contributions) == {"imaging", "tabular"}
    assert pred.to_dict()["provenance"]["modalities_present"] == ["imaging", "tabular"]


def test_deterministic_on_cpu_across_engines(ckpt: Path) -> None:
    a = InferenceEngine.load(ckpt, device="cpu", registry=toy_registry()).predict([_case(3)])[0]
    b = InferenceEngine.load(ckpt, device="cpu", registry=toy_registry()).predict([_case(3)])[0]
    assert a.malignancy_risk == b.malignancy_risk  # bit-identical, not approximately equal
    assert a.tumor_probability == b.tumor_probability
    assert a.modality_contributions == b.modality_contributions


def test_batched_matches_single_and_order(ckpt: Path) -> None:
    engine = InferenceEngine.load(ckpt, device="cpu", registry=toy_registry(), batch_size=3)
    cases = [_case(i, tabular=i % 2 == 0) for i in range(5)]
    batched = engine.predict(cases)
    single = [engine.predict([c])[0] for c in cases]
    assert [p.case_id for p in batched] == [c.case_id for c in cases]
    for x, y in zip(batched, single, strict=True):
        assert x.malignancy_risk == pytest.approx(y.malignancy_risk, abs=1e-5)
    assert batched[1].provenance.modalities_present == ("imaging",)
    assert set(batched[1].modality_contributions) == {"imaging"}


def test_finding_centre_in_patient_mm(ckpt: Path) -> None:
    engine = InferenceEngine.load(ckpt, device="cpu", registry=toy_registry())
    (pred,) = engine.predict([_case(7, blob=(5, 2, 1))])
    assert len(pred.findings) == 1
    f = pred.findings[0]
    want = (AFFINE @ np.array([5, 2, 1, 1.0]))[:3]
    assert np.allclose(f.center_mm, want, atol=0.5)
    assert f.center_voxel == (5, 2, 1)
    assert f.malignancy_risk == pytest.approx(pred.malignancy_risk)  # sole finding carries the case risk
    # Without imaging: no findings, still a risk from the records.
    (no_img,) = engine.predict([_case(7, imaging=False)])
    assert no_img.findings == () and no_img.provenance.modalities_present == ("tabular",)


def test_bad_input_is_input_error(ckpt: Path) -> None:
    engine = InferenceEngine.load(ckpt, device="cpu", registry=toy_registry())
    with pytest.raises(InputError) as e1:
        engine.prepare(Case("x", "p", inputs={}))
    assert e1.value.reason == "case.no_modalities"
    with pytest.raises(InputError) as e2:
        engine.prepare(Case("x", "p", inputs={"tabular": {"a": "not-a-number", "b": 1}}))
    assert e2.value.reason == "tabular.invalid"
    with pytest.raises(InputError) as e3:
        engine.prepare(Case("x", "p", inputs={"imaging": {"volume": np.zeros((2, 2, 2))}}))
    assert e3.value.reason == "imaging.bad_shape"


def test_single_modality_checkpoint_ignores_other_inputs(tmp_path: Path) -> None:
    reg = toy_registry()
    path = make_checkpoint(tmp_path / "tab.pt", reg, modalities=("tabular",))
    engine = InferenceEngine.load(path, device="cpu", registry=reg)
    assert engine.modalities == ("tabular",)
    (pred,) = engine.predict([_case(2)])
    assert pred.provenance.modalities_present == ("tabular",)
    assert pred.findings == ()
    with pytest.raises(InputError):
        engine.predict([_case(2, tabular=False)])  # imaging alone is nothing to this model
