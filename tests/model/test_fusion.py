"""Fusion model: masking really removes absent modalities, dropout keeps one, calibration, batching."""

from __future__ import annotations

import pytest
import torch
from toy_plugins import TOY_SPEC, ToyImagingEncoder, ToyTabularEncoder

from mmclinic.model.batching import concat_cases
from mmclinic.model.calibration import fit_platt
from mmclinic.model.fusion import FusionConfig, FusionModel, findings_logits


def _model(dropout: float = 0.0, late: bool = False) -> FusionModel:
    torch.manual_seed(0)
    encs = {"imaging": ToyImagingEncoder(16), "tabular": ToyTabularEncoder(16, 2)}
    cfg = FusionConfig(("imaging", "tabular"), d_model=16, n_heads=2, modality_dropout=dropout, late_fusion=late)
    return FusionModel(encs, cfg)


def _batch(b: int, img_present: list[bool], tab_present: list[bool]) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return {
        "imaging": {
            "volume": torch.randn(b, 1, *TOY_SPEC.imaging.size, generator=g),
            "present": torch.tensor(img_present),
        },
        "tabular": {"x": torch.randn(b, 2, generator=g), "present": torch.tensor(tab_present)},
    }


def test_absent_modality_content_does_not_change_output() -> None:
    model = _model().eval()
    batch = _batch(3, [True, False, True], [True, True, False])
    out1 = model(batch).logits
    # Change the data of the absent entries only: outputs must be identical.
    batch["imaging"]["volume"][1] += 100.0
    batch["tabular"]["x"][2] -= 50.0
    out2 = model(batch).logits
    assert torch.equal(out1, out2)
    # Changing a present entry does change the output (the test above can fail).
    batch["tabular"]["x"][0] += 5.0
    assert not torch.allclose(model(batch).logits[0], out1[0])


def _randomise_late_heads(model: FusionModel) -> None:
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for lin in model.late_heads.values():
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=g))
            lin.bias.copy_(torch.randn(lin.bias.shape, generator=g))


def test_late_fusion_starts_as_the_cls_model_and_adds_only_visible_modalities() -> None:
    batch = _batch(3, [True, False, True], [True, True, False])
    late = _model(late=True).eval()
    # Zero-initialised late heads: the same output as the CLS-only model with the same weights.
    assert torch.equal(late(batch).logits, _model().eval()(batch).logits)
    _randomise_late_heads(late)
    out1 = late(batch).logits
    assert not torch.allclose(out1, _model().eval()(batch).logits)  # the late path now contributes
    # Absent or hidden data still cannot reach the output through the late path.
    batch["imaging"]["volume"][1] += 100.0
    batch["tabular"]["x"][2] -= 50.0
    assert torch.equal(late(batch).logits, out1)
    hide = torch.tensor([[True, False], [False, False], [False, False]])
    hidden1 = late(batch, hide=hide).logits
    batch["imaging"]["volume"][0] += 7.0
    hidden2 = late(batch, hide=hide).logits
    assert torch.equal(hidden1[0], hidden2[0]) and not torch.equal(hidden2[0], late(batch).logits[0])
    # Everything hidden: finite, and no late term at all (only the CLS head sees the empty case).
    every = torch.ones(3, 2, dtype=torch.bool)
    assert torch.isfinite(late(batch, hide=every).logits).all()
    assert torch.equal(late(batch, hide=every).logits, _model().eval()(batch, hide=every).logits)


def test_late_fusion_heads_receive_gradients() -> None:
    late = _model(late=True).train()
    batch = _batch(2, [True, True], [True, True])
    late(batch).logits.sum().backward()
    for m in ("imaging", "tabular"):
        grad = late.late_heads[m].weight.grad
        assert grad is not None and grad.abs().sum() > 0


def test_everything_hidden_is_finite_and_shapes() -> None:
    model = _model().eval()
    batch = _batch(2, [True, True], [True, False])
    out = model(batch, hide=torch.ones(2, 2, dtype=torch.bool))
    assert out.logits.shape == (2, 2)
    assert torch.isfinite(out.logits).all()
    assert out.extras["imaging"]["lesion_logits"].shape == (2, 1, *TOY_SPEC.imaging.size)
    assert set(out.aux_logits) == {"imaging", "tabular"}
    assert out.visible is not None and not out.visible.any()


def test_modality_dropout_keeps_one_present_modality() -> None:
    model = _model(dropout=0.9)
    vis = torch.tensor([[True, True], [True, False], [False, True]]).repeat(200, 1)
    hide = model.sample_hide(vis, torch.Generator().manual_seed(0))
    kept = vis & ~hide
    assert kept.any(dim=1).all()  # never everything removed
    assert not (hide & ~vis).any()  # never "hides" an absent modality
    # With p=0.9 most two-modality rows lose one modality.
    both = vis.all(dim=1)
    assert (kept[both].sum(1) == 1).float().mean() > 0.7


def test_temperature_recovers_known_scale() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, generator=g) * 3
    y = (torch.rand(20000, generator=g) < torch.sigmoid(z / 2.5)).float()
    t = fit_platt(z, y, shift=False)[0]
    assert abs(t - 2.5) < 0.15
    assert fit_platt(z, torch.ones_like(z), shift=False)[0] == 1.0  # one class: nothing to fit


def test_platt_recovers_known_scale_and_shift() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(20000, generator=g) * 3
    y = (torch.rand(20000, generator=g) < torch.sigmoid(z / 2.0 - 0.7)).float()
    t, s = fit_platt(z, y)
    assert abs(t - 2.0) < 0.15 and abs(s + 0.7) < 0.1
    # A temperature alone cannot remove the shift: its fit is worse on the same data.
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    t_only = fit_platt(z, y, shift=False)[0]
    assert bce(z / t + s, y) < bce(z / t_only, y) - 1e-3
    assert fit_platt(z, torch.zeros_like(z)) == (1.0, 0.0)


def test_concat_cases_zero_pads_variable_length() -> None:
    a = {"s": torch.ones(1, 3, 2), "v": torch.ones(1, 3, dtype=torch.bool), "present": torch.tensor([True])}
    b = {"s": torch.ones(1, 5, 2), "v": torch.ones(1, 5, dtype=torch.bool), "present": torch.tensor([False])}
    out = concat_cases([a, b])
    assert out["s"].shape == (2, 5, 2) and out["v"].shape == (2, 5)
    assert out["s"][0, 3:].abs().sum() == 0 and not out["v"][0, 3:].any()
    assert out["present"].tolist() == [True, False]


def test_lesion_map_starts_at_rare_class_prior() -> None:
    model = _model().eval()
    with torch.no_grad():
        out = model(_batch(2, [True, True], [True, True]))
    lesion = torch.sigmoid(out.extras["imaging"]["lesion_logits"])
    # Whatever the plugin's head initialisation, an untrained map is "almost surely empty".
    assert float(lesion.mean()) < 0.01


def test_findings_come_from_the_detector_when_there_is_one() -> None:
    lesion, detection = torch.zeros(1, 1, 2, 2, 2), torch.ones(1, 1, 2, 2, 2)
    assert findings_logits({"lesion_logits": lesion}) is lesion
    assert findings_logits({"lesion_logits": lesion, "detection_logits": detection}) is detection
    assert findings_logits({}) is None


def test_detector_needs_an_encoder_that_can_carry_one() -> None:
    model = _model()
    with pytest.raises(ValueError, match="cannot carry a detector"):
        model.add_detector("imaging")  # the toy encoder has no ``add_detector``
    with pytest.raises(ValueError, match="no 'notes' encoder"):
        model.add_detector("notes")
    assert model.cfg.detector_modality is None


def test_detector_modality_round_trips_and_older_configs_have_none() -> None:
    cfg = FusionConfig(("imaging", "tabular"), detector_modality="imaging")
    assert FusionConfig.from_dict(cfg.to_dict()) == cfg
    old = FusionConfig(("imaging",)).to_dict()
    del old["detector_modality"]
    assert FusionConfig.from_dict(old).detector_modality is None
