"""``mmclinic train-detector``: train a findings detector beside a trained model's CT encoder; the risk stays."""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from torch import nn

from mmclinic.case import IMAGING
from mmclinic.engine.checkpoint import CHECKPOINT_NAME, save_checkpoint
from mmclinic.engine.engine import InferenceEngine
from mmclinic.errors import ConfigError, InputError
from mmclinic.logs import event
from mmclinic.model.detection import DetectionConfig
from mmclinic.registry import Registry
from mmclinic.training.cache import CaseCache, batch_of, safe_get
from mmclinic.training.data import lesion_target, load_cohort, patient_split
from mmclinic.training.detection_tuning import Located, candidates, tune_detection
from mmclinic.training.metrics import GtLesion
from mmclinic.training.progress import progress_bar
from mmclinic.training.trainer import TrainConfig

log = logging.getLogger(__name__)

SUMMARY = "detector_summary.json"


@dataclass(frozen=True)
class DetectorConfig:
    """Schedule of a detector run (stored in the checkpoint's ``detector`` record)."""

    steps: int = 1000
    batch_size: int = 4  # whole volumes: instance norm then sees what it sees at inference
    lr: float = 1e-3  # peak of a one-cycle schedule
    eval_every: int = 250  # validation passes; the best one is kept
    # Small lesions are what a 5 mm grid misses: scans with a lesion under ``small_mm`` are drawn
    # ``small_boost`` times as often, and each lesion's voxels weigh at least ``lesion_voxels / its size``,
    # so a one-voxel lesion counts about as much as a large one instead of 1/100 of it.
    small_mm: float = 10.0
    small_boost: float = 3.0
    lesion_voxels: float = 30.0
    seed: int = 0
    device: str = "auto"


@dataclass
class _Scan:
    image: torch.Tensor  # [1, X, Y, Z]
    target: torch.Tensor  # [1, X, Y, Z]
    weight: torch.Tensor  # [1, X, Y, Z]
    meta: dict[str, Any]
    lesions: list[GtLesion]


def lesion_weights(target: torch.Tensor, lesion_voxels: float) -> torch.Tensor:
    """Voxel weights of a lesion mask ``[1, X, Y, Z]``: background 1, each lesion ``max(1, lesion_voxels / size)``."""
    labels, n = ndimage.label(target[0].numpy() > 0.5)
    w = np.ones(labels.shape, dtype=np.float32)
    if n:
        sizes = np.bincount(labels.ravel())
        per = np.maximum(1.0, lesion_voxels / np.maximum(sizes, 1)).astype(np.float32)
        per[0] = 1.0
        w = per[labels]
    return torch.from_numpy(w)[None]


def train_detector(
    manifest: Path,
    model: str | Path,
    out: Path,
    cfg: DetectorConfig | None = None,
    cache_dir: Path | None = None,
    registry: Registry | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Give ``model``'s imaging encoder a detector trained on ``manifest``'s lesions; write ``out/model.pt``.

    The detector starts as a copy of the encoder's lesion-map network and is the only thing trained, so
    every case's risk stays what ``model`` gives. Training and validation cases follow the model's own
    patient split (its validation patients calibrated it; here they pick the best step and the findings'
    post-processing). Returns the run summary (also written to ``out/detector_summary.json``).
    """
    cfg = cfg or DetectorConfig()
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.eval_every < 1:
        raise ConfigError("detector.bad_config", "steps, batch size and eval_every must be at least 1")
    engine = InferenceEngine.load(model, device=cfg.device, registry=registry)
    if IMAGING not in engine.modalities:
        raise ConfigError("detector.no_imaging", f"the model reads {', '.join(engine.modalities)}: no imaging")
    if engine.model.cfg.detector_modality is not None:
        raise ConfigError("detector.exists", "the model already has a detector; start from the model without it")
    cohort = load_cohort(manifest, engine.spec.labels)
    if not cohort.lesions:
        raise InputError("detector.no_lesions", "the cohort has no ground-truth lesions (ground_truth.json)")
    training_cfg = engine.meta.get("training", {}).get("config", {})
    default = TrainConfig()  # a checkpoint's config records both; the defaults are the trainer's own
    val_fraction = float(training_cfg.get("val_fraction", default.val_fraction))
    split_seed = int(training_cfg.get("seed", default.seed))
    train_cases, val_cases = patient_split(cohort.cases, val_fraction, split_seed)
    out.mkdir(parents=True, exist_ok=True)
    cache = CaseCache(cache_dir or out / "cache", engine)
    scans: dict[str, list[_Scan]] = {}
    rejected: dict[str, str] = {}
    for name, cases in (("train", train_cases), ("validation", val_cases)):
        scans[name] = []
        with progress_bar(f"loading ({name})", len(cases), enabled=progress) as advance:
            for case in cases:
                advance()
                got = safe_get(cache, case)
                if not isinstance(got, dict):
                    rejected[case.case_id] = got.reason
                    continue
                if not got[IMAGING].present:
                    continue
                image = batch_of([got], (IMAGING,))[IMAGING]["image"][0].float()
                meta = got[IMAGING].meta
                lesions = cohort.lesions.get(case.case_id, [])
                size = (int(image.shape[1]), int(image.shape[2]), int(image.shape[3]))
                target = lesion_target(lesions, engine.plugins[IMAGING], meta, size, engine.spec.imaging.spacing_mm)
                scans[name].append(_Scan(image, target, lesion_weights(target, cfg.lesion_voxels), meta, lesions))
    if not scans["train"] or not scans["validation"]:
        raise InputError("detector.too_few_cases", "both the training and the validation split need scans")

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    fusion = engine.model
    detector = fusion.add_detector(IMAGING)
    encoder = fusion.encoders[IMAGING]
    detect = getattr(encoder, "detect", None)
    if not callable(detect):
        raise ConfigError("detector.unsupported", "the imaging encoder gives no detector map")
    device = engine.device
    opt = torch.optim.AdamW(detector.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.1)
    train = scans["train"]
    draw = np.array([cfg.small_boost if any(g.diameter_mm < cfg.small_mm for g in s.lesions) else 1.0 for s in train])
    draw /= draw.sum()

    def validate() -> tuple[float, dict[str, Any], DetectionConfig]:
        detector.eval()
        found: list[dict[float, Located]] = []
        spacing = engine.spec.imaging.spacing_mm
        with torch.no_grad():
            for i in range(0, len(scans["validation"]), 8):
                chunk = scans["validation"][i : i + 8]
                logits = detect(torch.stack([s.image for s in chunk]).to(device))
                prob = torch.sigmoid(logits.float())[:, 0].cpu().numpy()
                found += [candidates(prob[r], engine.plugins[IMAGING], s.meta, spacing) for r, s in enumerate(chunk)]
        detector.train()
        det_cfg, summary = tune_detection(found, [s.lesions for s in scans["validation"]], voxel_mm=min(spacing))
        return float(np.nan_to_num(summary["sensitivity"])), summary, det_cfg

    start_sens, start_summary, start_cfg = validate()
    event(log, "detector.validated", step=0, sensitivity=round(start_sens, 4))
    best = (start_sens, 0, copy.deepcopy(detector.state_dict()), start_summary, start_cfg)
    history: list[dict[str, Any]] = [{"step": 0, "val_sensitivity": start_sens}]
    t0 = time.perf_counter()
    detector.train()
    loss_sum, loss_n = 0.0, 0
    with progress_bar("training the detector", cfg.steps, enabled=progress) as advance:
        for step in range(1, cfg.steps + 1):
            picked = [train[int(i)] for i in rng.choice(len(train), size=cfg.batch_size, p=draw)]
            x = torch.stack([s.image for s in picked]).to(device)
            y = torch.stack([s.target for s in picked]).to(device)
            w = torch.stack([s.weight for s in picked]).to(device)
            loss = nn.functional.binary_cross_entropy_with_logits(detect(x).float(), y, weight=w)
            opt.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            loss_sum, loss_n = loss_sum + float(loss.detach()), loss_n + 1
            advance()
            if step % cfg.eval_every == 0 or step == cfg.steps:
                sens, summary, det_cfg = validate()
                mean_loss = loss_sum / loss_n
                history.append({"step": step, "train_loss": mean_loss, "val_sensitivity": sens})
                event(log, "detector.validated", step=step, sensitivity=round(sens, 4), loss=round(mean_loss, 5))
                loss_sum, loss_n = 0.0, 0
                if sens > best[0]:
                    best = (sens, step, copy.deepcopy(detector.state_dict()), summary, det_cfg)
    sens, best_step, state, summary, det_cfg = best
    detector.load_state_dict(state)
    detector.eval()
    record = {
        "source_weights_sha256": engine.weights_sha256,
        "config": asdict(cfg),
        "train_scans": len(train),
        "validation_scans": len(scans["validation"]),
        "rejected": len(rejected),
        "best_step": best_step,
        "val_sensitivity_before": start_sens,
        "val_sensitivity": sens,
        "history": history,
        "minutes": (time.perf_counter() - t0) / 60.0,
    }
    meta = copy.deepcopy(engine.meta)
    meta["fusion"] = fusion.cfg.to_dict()
    meta["detection"] = asdict(det_cfg)
    meta.setdefault("metrics", {})["val_detection"] = summary
    meta["detector"] = record
    sha = save_checkpoint(out / CHECKPOINT_NAME, fusion.cpu(), meta)
    result = {"checkpoint": str(out / CHECKPOINT_NAME), "sha256": sha, **record, "val_detection": summary}
    (out / SUMMARY).write_text(json.dumps(result, indent=1, default=str))
    event(log, "detector.done", sensitivity=round(sens, 4), best_step=best_step, weights=sha[:12])
    return result
