"""End to end with the real plugins: synthetic DICOM + notes + records → train → evaluate → engine predict."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tests_support import require_real_plugins

from mmclinic.case import IMAGING
from mmclinic.engine import InferenceEngine
from mmclinic.engine.geometry import voxel_to_patient
from mmclinic.registry import get_registry
from mmclinic.synth import LABEL_COLUMNS
from mmclinic.training.data import lesion_target, load_cohort
from mmclinic.training.trainer import TrainConfig, train

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_real_plugins()
    from mmclinic.synth import SynthSettings, generate_cohort

    out = tmp_path_factory.mktemp("synth")
    generate_cohort(SynthSettings(cases=10, seed=7), out)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, cohort_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(d_model=16, n_heads=2, n_layers=1, epochs=1, batch_size=4, device="cpu", val_fraction=0.4, seed=3)
    train(cohort_dir / "manifest.csv", out, cfg, cache_dir=cohort_dir.parent / "cache", progress=False)
    return out


def test_ground_truth_lesions_map_into_the_model_grid(cohort_dir: Path) -> None:
    from mmclinic.engine.factory import new_model, task_parts

    reg = get_registry()
    parts = task_parts(reg, "tumor-risk")
    engine = InferenceEngine(
        new_model(parts, d_model=16, n_heads=2, n_layers=1), {}, parts.task, parts.plugins, torch.device("cpu"), ""
    )
    cohort = load_cohort(cohort_dir / "manifest.csv", LABEL_COLUMNS)
    checked = 0
    for case in cohort.cases:
        for les in cohort.lesions.get(case.case_id, []):
            meta = engine.prepare(case).inputs[IMAGING].meta
            t = lesion_target(
                [les], parts.plugins[IMAGING], meta, parts.spec.imaging.size, parts.spec.imaging.spacing_mm
            )
            assert t.sum() >= 1
            # Soft centre of the target ball, mapped back to patient mm, is the ground-truth centre.
            idx = np.argwhere(t[0].numpy() > 0).mean(axis=0)
            back = voxel_to_patient(parts.plugins[IMAGING], meta, idx)
            assert np.linalg.norm(np.subtract(back, les.center_mm)) < 5.0  # within one 5 mm voxel
            checked += 1
    assert checked > 0, "the synthetic cohort had no lesion to check"


def test_train_evaluate_predict_with_real_plugins(run_dir: Path, cohort_dir: Path, tmp_path: Path) -> None:
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["cache"]["misses"] > 0
    engine = InferenceEngine.load(run_dir, device="cpu")
    assert set(engine.modalities) == {"imaging", "notes", "tabular"}
    cohort = load_cohort(cohort_dir / "manifest.csv", LABEL_COLUMNS)
    preds = engine.predict(cohort.cases[:2])
    prov = preds[0].provenance
    assert set(prov.plugin_versions) == {"ct-dicom", "clinical-notes", "tabular-records"}
    assert any(k.startswith("imaging:") for k in prov.input_fingerprints)
    assert any(k.startswith("notes:") for k in prov.input_fingerprints)
    assert prov.modalities_present == ("imaging", "notes", "tabular")
    assert 0.0 < preds[0].malignancy_risk < 1.0

    from mmclinic.training.evaluate import evaluate

    r = evaluate(
        cohort_dir / "manifest.csv",
        run_dir,
        tmp_path / "eval",
        cache_dir=cohort_dir.parent / "cache",
        device="cpu",
        n_boot=20,
        progress=False,
    )
    assert r["n_cases"] == 10
    # The generator's cohorts carry p_observed: the Bayes reference is it, beside the latent p_malignant's.
    assert {"bayes_optimal", "true_probability", "oracle_imaging", "oracle_notes", "oracle_tabular"} <= set(
        r["reference"]
    )
    assert set(r["ablation"]) == {"without_imaging", "without_notes", "without_tabular"}
    assert "detection" in r
    # Per-finding risk is scored against the generator's lesion-alone probabilities, three ways.
    fr = r["finding_risk"]
    assert fr["n_lesion_pairs"] >= 0 and fr["n_hit_miss_pairs"] >= 0
    assert set(fr["pair_concordance"]) <= {"isolated", "by_confidence", "isolated_x_confidence"}
    assert "Per-finding malignancy risk" in (tmp_path / "eval" / "report.md").read_text()


def test_notes_assertion_head_trains_on_the_cohort_annotations(cohort_dir: Path, tmp_path: Path) -> None:
    """Warm-up epochs train the real notes encoder on the synthetic annotations; the head ships in the checkpoint."""
    from mmclinic.training.data import note_assertions

    cfg = TrainConfig(
        modalities=("notes",),
        d_model=16,
        n_heads=2,
        n_layers=1,
        epochs=11,
        patience=11,
        batch_size=1,
        lr=5e-3,
        device="cpu",
        val_fraction=0.4,
        seed=3,
        assertion_weight=1.0,
        assertion_warmup=10,
    )
    res = train(cohort_dir / "manifest.csv", tmp_path, cfg, cache_dir=cohort_dir.parent / "cache", progress=False)
    gt = json.loads((cohort_dir / "ground_truth.json").read_text())
    items = note_assertions(gt)[0]
    assert len(items) == 8
    history = res.summary["history"]
    # Warm-up epochs see only the assertion loss. On 6 training cases it falls well below that of
    # guessing every state at even odds (ln 4), and then the case-label loss joins in (the jump).
    losses = [h["train_loss"] for h in history]
    assert losses[9] < 0.8 * math.log(4) < losses[0]
    assert losses[10] > losses[9] + 0.5
    assert all("val_assertion_accuracy" in h for h in history)
    assert res.summary["best_epoch"] == 11  # no checkpoint is selected from warm-up epochs
    assert set(res.summary["val_assertion_accuracy"]) <= set(items)
    engine = InferenceEngine.load(tmp_path, device="cpu")
    assert engine.model.cfg.assertion_items == items
    cohort = load_cohort(cohort_dir / "manifest.csv", LABEL_COLUMNS)
    preds = engine.predict(cohort.cases[:2])
    assert all(0.0 <= p.malignancy_risk <= 1.0 for p in preds)


def test_detector_trains_beside_the_model_and_leaves_its_risk_alone(
    run_dir: Path, cohort_dir: Path, tmp_path: Path
) -> None:
    """``train_detector``: a second U-Net gives the findings; every case's risk stays the source model's."""
    from mmclinic.case import sha256_file
    from mmclinic.errors import ConfigError
    from mmclinic.model.fusion import LESION_KEY
    from mmclinic.training.cache import CaseCache, batch_of
    from mmclinic.training.detector import DetectorConfig, train_detector

    cache = cohort_dir.parent / "cache"
    cfg = DetectorConfig(steps=3, eval_every=2, batch_size=2, device="cpu")
    res = train_detector(cohort_dir / "manifest.csv", run_dir, tmp_path / "det", cfg, cache_dir=cache, progress=False)
    assert [h["step"] for h in res["history"]] == [0, 2, 3]
    assert res["source_weights_sha256"] == sha256_file(run_dir / "model.pt")
    assert res["train_scans"] + res["validation_scans"] == 10 and res["validation_scans"] > 0
    source = InferenceEngine.load(run_dir, device="cpu")
    engine = InferenceEngine.load(tmp_path / "det", device="cpu")
    assert engine.model.cfg.detector_modality == IMAGING and source.model.cfg.detector_modality is None
    assert engine.meta["detector"]["best_step"] == res["best_step"]
    assert engine.detection.threshold == res["val_detection"]["voxel_threshold"]
    cohort = load_cohort(cohort_dir / "manifest.csv", LABEL_COLUMNS)
    # Risks are bit-identical: the detector is the only new part and nothing reads it but the findings.
    cached = [CaseCache(cache, source).get(c) for c in cohort.cases]
    b = batch_of(cached, source.modalities)
    before, after = source.run(b, contributions=False), engine.run(b, contributions=False)
    assert np.array_equal(before.malignancy_risk, after.malignancy_risk)
    assert np.array_equal(before.tumor_probability, after.tumor_probability)
    # The findings' map is the detector's (the lesion map the risk reads is the source model's) ...
    assert after.lesion_prob is not None and before.lesion_prob is not None
    encoder = engine.model.encoders[IMAGING]
    with torch.no_grad():
        lesion = torch.sigmoid(engine.model.encode(b)[IMAGING].extras[LESION_KEY].float())[:, 0].numpy()
        detected = torch.sigmoid(encoder.detect(b[IMAGING]["image"]).float())[:, 0].numpy()
    assert np.array_equal(before.lesion_prob, lesion) and np.array_equal(after.lesion_prob, detected)
    # ... and a network of its own: moving its output moves the findings' map and not the risk.
    with torch.no_grad():
        encoder.detector.final_conv.bias.add_(3.0)
    moved = engine.run(b, contributions=False)
    assert moved.lesion_prob is not None and float(moved.lesion_prob.mean()) > float(after.lesion_prob.mean())
    assert np.array_equal(moved.malignancy_risk, before.malignancy_risk)
    with pytest.raises(ConfigError) as err:
        train_detector(cohort_dir / "manifest.csv", tmp_path / "det", tmp_path / "again", cfg, cache_dir=cache)
    assert err.value.reason == "detector.exists"
    # A warm start from the model with a detector copies its CT encoder without the detector.
    warm = TrainConfig(
        d_model=16,
        n_heads=2,
        n_layers=1,
        epochs=1,
        batch_size=4,
        device="cpu",
        val_fraction=0.4,
        seed=3,
        init_from=f"imaging={tmp_path / 'det'}",
        freeze_init=True,
    )
    train(cohort_dir / "manifest.csv", tmp_path / "warm", warm, cache_dir=cache, progress=False)
    assert InferenceEngine.load(tmp_path / "warm", device="cpu").model.cfg.detector_modality is None
