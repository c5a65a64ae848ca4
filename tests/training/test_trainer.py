"""Training on a toy cohort: learns, calibrates, resumes bit-exactly, caches, freezes, evaluates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from toy_plugins import ToyImagingEncoder, toy_cohort, toy_registry

from mmclinic.case import sha256_file
from mmclinic.engine import InferenceEngine
from mmclinic.engine.checkpoint import read_checkpoint
from mmclinic.errors import ConfigError, ModelError
from mmclinic.training.evaluate import evaluate
from mmclinic.training.trainer import TrainConfig, Trainer, init_sources, train

SMALL = {
    "task": "toy-task",
    "d_model": 16,
    "n_heads": 2,
    "n_layers": 1,
    "batch_size": 8,
    "device": "cpu",
    "lr": 3e-3,
    "patience": 50,
    "val_fraction": 0.3,
}


def _cfg(**kw: Any) -> TrainConfig:
    return TrainConfig(**{**SMALL, **kw})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def cohort() -> Any:
    return toy_cohort(80, seed=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, cohort: Any) -> Path:
    out = tmp_path_factory.mktemp("run")
    train(cohort, out, _cfg(epochs=6), registry=toy_registry(), progress=False)
    return out


def test_training_learns_and_writes_a_loadable_calibrated_checkpoint(trained: Path) -> None:
    summary = json.loads((trained / "train_summary.json").read_text())
    assert summary["val_auroc"] > 0.75  # the toy signal is strong; an untrained model sits near 0.5
    assert len(summary["history"]) == 6 and 1 <= summary["best_epoch"] <= 6
    meta = read_checkpoint(trained / "model.pt")["meta"]
    assert meta["training"]["config"]["epochs"] == 6
    assert meta["training"]["n_train"] + meta["training"]["n_val"] == 80
    assert all(0.05 <= t <= 20 for t in meta["temperature"]) and meta["temperature"] != [1.0, 1.0]
    # Platt scaling: the fitted shift lives in the logit offset (offset = -log w+ + s * T).
    shifts = meta["metrics"]["calibration_shift"]
    assert len(shifts) == 2 and all(-5 <= v <= 5 for v in shifts)
    pos_weight = torch.tensor(meta["training"]["pos_weight"])
    offset = read_checkpoint(trained / "model.pt")["state_dict"]["logit_offset"]
    expected = -torch.log(pos_weight) + torch.tensor(shifts) * torch.tensor(meta["temperature"])
    assert torch.allclose(offset, expected.float(), atol=1e-5)
    assert 0.0 < meta["metrics"]["threshold"] < 1.0
    # The findings' confidence cut-off was chosen on validation scans with ground-truth lesions.
    assert meta["metrics"]["val_detection"]["n_scans"] > 0
    assert meta["detection"]["min_confidence"] == meta["metrics"]["val_detection"]["min_confidence"] >= 0.1
    # So was the voxel threshold: the one with the highest validation sensitivity among those tried.
    det = meta["metrics"]["val_detection"]
    by_t = {float(t): s for t, s in det["sensitivity_by_voxel_threshold"].items()}
    assert meta["detection"]["threshold"] == det["voxel_threshold"] in by_t
    assert by_t[det["voxel_threshold"]] == max(by_t.values()) == det["sensitivity"]
    engine = InferenceEngine.load(trained, device="cpu", registry=toy_registry())
    assert engine.weights_sha256 == summary["weights_sha256"]


def test_resume_after_interruption_equals_uninterrupted_run(
    tmp_path: Path, cohort: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight = tmp_path / "straight"
    train(cohort, straight, _cfg(epochs=3), registry=toy_registry(), progress=False)

    resumed = tmp_path / "resumed"
    _interrupted_run(resumed, cohort, monkeypatch, _cfg(epochs=3), at_epoch=3)
    assert not (resumed / "model.pt").exists() and (resumed / "last.pt").exists()
    trainer = Trainer(_cfg(epochs=3), resumed, toy_registry(), progress=False)
    res = trainer.run(cohort)
    assert trainer.cache_stats["misses"] == 0  # second run read every input from the cache
    a = read_checkpoint(straight / "last.pt")["state_dict"]
    b = read_checkpoint(resumed / "last.pt")["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))
    assert [h["epoch"] for h in res.summary["history"]] == [1, 2, 3]


def _interrupted_run(
    out: Path, cohort: Any, monkeypatch: pytest.MonkeyPatch, cfg: TrainConfig, at_epoch: int = 2
) -> None:
    """A run killed when epoch ``at_epoch`` starts: ``last.pt`` holds the epochs before it."""
    real_epoch = Trainer._epoch

    def crash(self: Trainer, data: Any, opt: Any, pw: Any, epoch: int, labels: bool = True) -> float:
        if epoch == at_epoch:
            raise KeyboardInterrupt  # killed mid-run
        return real_epoch(self, data, opt, pw, epoch, labels)

    monkeypatch.setattr(Trainer, "_epoch", crash)
    with pytest.raises(KeyboardInterrupt):
        train(cohort, out, cfg, registry=toy_registry(), progress=False)
    monkeypatch.setattr(Trainer, "_epoch", real_epoch)


def test_resume_refuses_other_data_or_settings_but_takes_a_longer_schedule(
    tmp_path: Path, cohort: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "run"
    _interrupted_run(out, cohort, monkeypatch, _cfg(epochs=3))
    with pytest.raises(ConfigError) as exc:  # another learning rate
        train(cohort, out, _cfg(epochs=3, lr=5e-3), registry=toy_registry(), progress=False)
    assert exc.value.reason == "train.resume_mismatch" and "lr" in exc.value.detail
    other = toy_cohort(80, seed=2)  # other cases behind the same ids
    with pytest.raises(ConfigError) as exc:
        train(other, out, _cfg(epochs=3), registry=toy_registry(), progress=False)
    assert "data" in exc.value.detail
    with caplog.at_level("INFO", logger="mmclinic"):
        res = train(cohort, out, _cfg(epochs=4, patience=50), registry=toy_registry(), progress=False)
    resumed = [r for r in caplog.records if getattr(r, "event", "") == "train.resumed"]
    assert len(resumed) == 1 and resumed[0].epoch == 1  # type: ignore[attr-defined]  # continued after epoch 1
    assert [h["epoch"] for h in res.summary["history"]] == [1, 2, 3, 4]


@pytest.mark.parametrize("split", [True, False], ids=["trunk-head", "whole-encoder"])
def test_two_phase_training_keeps_frozen_encoder_fixed(
    tmp_path: Path, cohort: Any, monkeypatch: pytest.MonkeyPatch, split: bool
) -> None:
    if not split:  # an encoder without trunk/head is replayed whole
        monkeypatch.setattr(ToyImagingEncoder, "trunk", None)
    captured: dict[str, torch.Tensor] = {}
    real_freeze = Trainer._freeze

    def spy(self: Trainer, examples: Any) -> None:
        captured.update({k: v.clone() for k, v in self.model.encoders["imaging"].state_dict().items()})
        real_freeze(self, examples)

    monkeypatch.setattr(Trainer, "_freeze", spy)
    out = tmp_path / "phased"
    train(cohort, out, _cfg(epochs=3, freeze_after=1, phase1_cases=20), registry=toy_registry(), progress=False)
    last = read_checkpoint(out / "last.pt")["state_dict"]
    assert captured, "phase 2 never started"
    head = {"proj.weight", "proj.bias"} if split else set()
    for k, v in captured.items():
        changed = not torch.equal(last[f"encoders.imaging.{k}"], v)
        # The trunk is fixed after the freeze; a trunk/head encoder keeps training its head.
        assert changed == (k in head), k
    InferenceEngine.load(out, device="cpu", registry=toy_registry())  # real encoder weights were saved


def test_init_from_copies_and_freezes_the_imaging_encoder(tmp_path: Path, trained: Path, cohort: Any) -> None:
    source = read_checkpoint(trained / "model.pt")["state_dict"]
    imaging = {k: v for k, v in source.items() if k.startswith("encoders.imaging.")}
    out = tmp_path / "warm"
    cfg = _cfg(epochs=2, modalities=("imaging",), init_from=str(trained), freeze_init=True)
    trainer = Trainer(cfg, out, registry=toy_registry(), progress=False)
    copied = trainer.model.state_dict()
    assert all(torch.equal(copied[k], v) for k, v in imaging.items())  # an exact copy before training
    trainer.run(cohort)
    meta = read_checkpoint(out / "model.pt")["meta"]
    assert [r["modalities"] for r in meta["training"]["init_from"]] == [["imaging"]]
    assert meta["training"]["init_from"][0]["sha256"] == sha256_file(trained / "model.pt")
    from mmclinic.training.model_card import _schedule

    schedule = _schedule(meta["training"]["config"], meta["training"])
    assert "copied from `model.pt`" in schedule and "frozen from epoch 1" in schedule
    last = read_checkpoint(out / "last.pt")["state_dict"]
    for k, v in imaging.items():
        # Frozen from epoch 1: the trunk keeps the copied weights, the head (proj) trains on.
        assert torch.equal(last[k], v) == (not k.startswith("encoders.imaging.proj.")), k


def test_init_from_several_sources_copies_and_freezes_each_named_encoder(
    tmp_path: Path, trained: Path, cohort: Any
) -> None:
    # A copy of the run under another name stands in for a second single-modality run.
    other = tmp_path / "other.pt"
    other.write_bytes((trained / "model.pt").read_bytes())
    source = read_checkpoint(other)["state_dict"]
    out = tmp_path / "warm2"
    cfg = _cfg(epochs=2, init_from=f"imaging={trained}, tabular={other}", freeze_init=True)
    trainer = Trainer(cfg, out, registry=toy_registry(), progress=False)
    trainer.run(cohort)
    init = read_checkpoint(out / "model.pt")["meta"]["training"]["init_from"]
    assert sorted((r["checkpoint"], tuple(r["modalities"])) for r in init) == [
        ("model.pt", ("imaging",)),
        ("other.pt", ("tabular",)),
    ]
    last = read_checkpoint(out / "last.pt")["state_dict"]
    tabular = {k: v for k, v in source.items() if k.startswith("encoders.tabular.")}
    assert tabular and all(torch.equal(last[k], v) for k, v in tabular.items())  # no trunk: frozen whole
    # The fusion layers were not copied and did train.
    assert not torch.equal(last["head.weight"], source["head.weight"])


def test_init_sources_parses_pairs_and_a_default_source() -> None:
    assert init_sources("run1", ("imaging",)) == [("imaging", "run1")]
    assert init_sources(" imaging=a ,notes=b,", ("imaging",)) == [("imaging", "a"), ("notes", "b")]
    for bad in ("=a", "notes=", "notes= "):
        with pytest.raises(ConfigError) as exc:
            init_sources(bad, ("imaging",))
        assert exc.value.reason == "train.bad_init_from"


def test_init_from_a_mismatched_checkpoint_is_refused(tmp_path: Path, trained: Path, cohort: Any) -> None:
    payload = torch.load(trained / "model.pt", weights_only=True)
    payload["meta"]["plugins"]["imaging"]["version"] = "9.0.0"
    torch.save(payload, tmp_path / "other.pt")
    with pytest.raises(ModelError) as exc:
        Trainer(_cfg(init_from=str(tmp_path / "other.pt")), tmp_path / "x", registry=toy_registry(), progress=False)
    assert exc.value.reason == "train.init_mismatch"
    with pytest.raises(ConfigError) as err:
        cfg = _cfg(modalities=("tabular",), init_from=str(trained))
        Trainer(cfg, tmp_path / "y", registry=toy_registry(), progress=False)
    assert err.value.reason == "train.init_nothing"


def test_evaluate_report_with_ablation_detection_and_comparison(tmp_path: Path, trained: Path, cohort: Any) -> None:
    single = tmp_path / "tab_only"
    train(cohort, single, _cfg(epochs=3, modalities=("tabular",)), registry=toy_registry(), progress=False)
    test_cohort = toy_cohort(40, seed=9)
    out = tmp_path / "report"
    r = evaluate(
        test_cohort, trained, out, compare=[single], device="cpu", n_boot=50, registry=toy_registry(), progress=False
    )
    assert {"report.json", "report.md", "roc.png", "reliability.png", "ablation.png"} <= {p.name for p in out.iterdir()}
    assert r["n_cases"] == 40
    f = r["fused"]
    assert f["auroc_ci95"][0] <= f["auroc"] <= f["auroc_ci95"][1]
    assert set(r["ablation"]) == {"without_imaging", "without_tabular"}
    assert r["detection"]["n_lesions"] > 0 and 0.0 <= r["detection"]["sensitivity"] <= 1.0
    assert set(r["detection"]["at_operating_point"]) == {"confidence", "sensitivity", "fp_per_scan"}
    cmp = r["compare"]["tabular"]
    assert cmp["modalities"] == ["tabular"]
    assert cmp["n"] < 40  # cases without records are nothing to a records-only model
    # The toy task has two modalities, so "tabular only" is "trained without imaging": compared with
    # the fused model evaluated with imaging removed.
    assert -1.0 <= cmp["fused_without_missing_minus_this_auroc"] <= 1.0
    assert len(cmp["fused_minus_this_auroc"]["ci95"]) == 2
    assert "ece" in r["goals"] and "fused_vs_best_single" in r["goals"]
    assert "AUROC" in (out / "report.md").read_text()
    json.loads((out / "report.json").read_text())


def test_bundle_writes_weights_card_and_goals(tmp_path: Path, trained: Path) -> None:
    from mmclinic.training.model_card import bundle, record_goals

    report_dir = tmp_path / "report"
    evaluate(
        toy_cohort(30, seed=4), trained, report_dir, device="cpu", n_boot=20, registry=toy_registry(), progress=False
    )
    data = tmp_path / "plugin_data"
    res = bundle(trained, report_dir / "report.json", data, {"commands": ["mmclinic synth --cases 30 --seed 4"]})
    assert res["sha256"] == sha256_file(data / "model.pt") == sha256_file(trained / "model.pt")
    card = (data / "MODEL_CARD.md").read_text()
    assert res["sha256"] in card and "Not for clinical decisions" in card and "--seed 4" in card
    assert "Platt scaling" in card  # the calibration the run used
    assert "findings detector" not in card  # the run has none (``train-detector`` adds one)
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"rows": {"x": {"name": "x"}}}))
    record_goals(results, json.loads((report_dir / "report.json").read_text()), res["sha256"])
    doc = json.loads(results.read_text())
    assert doc["rows"] == {"x": {"name": "x"}} and doc["tumor_risk_goals"]["weights_sha256"] == res["sha256"]


def test_card_states_how_the_findings_detector_was_trained() -> None:
    from mmclinic.training.model_card import _detector_training

    meta = {
        "detection": {"threshold": 0.2, "min_confidence": 0.225},
        "detector": {
            "train_scans": 1568,
            "validation_scans": 432,
            "best_step": 750,
            "config": {"steps": 1500},
            "minutes": 23.4,
            "val_sensitivity": 0.8912,
            "val_sensitivity_before": 0.8031,
        },
    }
    (line,) = _detector_training(meta)
    assert "1568 training and 432 validation scans" in line and "best step 750 of 1500" in line
    assert "0.891 (the lesion map it started from: 0.803)" in line and "cut-off 0.225" in line
    assert _detector_training({"detection": {}}) == []


@pytest.mark.parametrize("rate", [0.3, 0.0])
def test_training_hides_modalities_at_the_configured_rate_and_inference_never(
    tmp_path: Path, cohort: Any, monkeypatch: pytest.MonkeyPatch, rate: float
) -> None:
    from mmclinic.model.fusion import FusionModel

    hidden: list[float] = []
    real = FusionModel.sample_hide

    def spy(self: FusionModel, visible: torch.Tensor, generator: Any = None) -> torch.Tensor:
        hide = real(self, visible, generator)
        hidden.append(float(hide[visible].float().mean()))  # share of present modalities hidden
        return hide

    monkeypatch.setattr(FusionModel, "sample_hide", spy)
    cfg = _cfg(epochs=2, modality_dropout=rate)
    res = train(cohort, tmp_path / "run", cfg, registry=toy_registry(), progress=False)
    if rate == 0.0:
        assert hidden == []
    else:
        assert len(hidden) >= 2 and 0.1 < sum(hidden) / len(hidden) < 0.5  # about the rate, one batch at a time
    hidden.clear()
    engine = InferenceEngine.load(res.checkpoint, registry=toy_registry())
    engine.predict(list(cohort.cases)[:8])
    assert hidden == []  # inference sees every present modality


def test_progress_bars_show_each_stage_with_counts(
    tmp_path: Path, cohort: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    train(cohort, tmp_path / "run", _cfg(epochs=1), registry=toy_registry(), progress=True)
    out, err = capfd.readouterr()
    n = len(cohort.cases)
    assert "caching inputs" in err and f"{n}/{n}" in err  # every case counted
    assert "epoch 1" in err
    assert "caching inputs" not in out  # stdout is left to the command's results
