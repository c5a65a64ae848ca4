"""``mmclinic train``: cached inputs, patient-level split, weighted multi-task loss, early stopping, calibration."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mmclinic.case import IMAGING, Case, sha256_file
from mmclinic.engine.checkpoint import (
    CHECKPOINT_NAME,
    check_plugin,
    load_trainable,
    read_checkpoint,
    save_checkpoint,
    spec_to_dict,
)
from mmclinic.engine.device import autocast, resolve_device
from mmclinic.engine.engine import InferenceEngine, resolve_model_path
from mmclinic.engine.factory import model_meta, new_model, task_parts
from mmclinic.errors import ConfigError, InputError, ModelError
from mmclinic.logs import event
from mmclinic.model.batching import to_device
from mmclinic.model.calibration import fit_platt
from mmclinic.model.detection import DetectionConfig
from mmclinic.model.frozen import frozen_outputs, replay_for
from mmclinic.model.fusion import LESION_KEY, FusionModel, findings_logits
from mmclinic.registry import Registry, get_registry
from mmclinic.training.assertions import accuracy_by_item, assertion_loss, assertion_targets, attach_assertions
from mmclinic.training.cache import CachedInput, CaseCache, batch_of
from mmclinic.training.data import Cohort, load_cohort, patient_split
from mmclinic.training.detection_tuning import candidates, tune_detection
from mmclinic.training.examples import Example, build_examples
from mmclinic.training.metrics import auroc, ece, youden_threshold
from mmclinic.training.progress import progress_bar

log = logging.getLogger(__name__)

LAST, BEST = "last.pt", "best.pt"


# Settings a resumed run may change: they set how long the schedule runs, not what the epochs so far did.
RESUMABLE_CHANGES = frozenset({"epochs", "patience", "max_minutes", "freeze_after", "device"})


def _data_fingerprint(train: list[Example], val: list[Example]) -> str:
    """SHA-256 over the split: each case's id, labels and input fingerprints, training cases first."""
    h = hashlib.sha256()
    for part in (train, val):
        for e in part:
            inputs = {m: ci.fingerprint for m, ci in sorted(e.inputs.items())}
            h.update(json.dumps([e.case_id, e.y.tolist(), inputs], sort_keys=True).encode())
        h.update(b"\x00")
    return h.hexdigest()


@dataclass
class TrainConfig:
    """Everything that shapes a run (recorded in the checkpoint)."""

    task: str = "tumor-risk"
    modalities: tuple[str, ...] = ()  # empty: every modality the task accepts
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    dropout: float = 0.1
    modality_dropout: float = 0.3
    late_fusion: bool = False  # see FusionConfig.late_fusion
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 6
    val_fraction: float = 0.2
    seed: int = 0
    max_minutes: float = 0.0  # 0: no limit
    aux_weight: float = 0.3
    # Weight of the notes assertion head's loss (0: no head). The head reads, for every finding the
    # cohort's annotations name, whether the notes state, hedge, negate or omit it (``attach_assertions``).
    assertion_weight: float = 0.0
    # Epochs at the start that train the assertion head alone (no case-label loss): the notes tokens
    # learn the findings' states before the case heads, which overfit the labels within a few epochs,
    # stop the run. They neither select a checkpoint nor count towards patience.
    assertion_warmup: int = 0
    lesion_weight: float = 1.0
    lesion_pos_weight: float = 20.0
    max_pos_weight: float = 10.0
    # Two-phase schedule for expensive encoders (the 3-D CNN on CPU): train end-to-end for
    # ``freeze_after`` epochs on at most ``phase1_cases`` cases, then freeze ``freeze_modalities``,
    # compute their outputs once, and train the rest on every case. 0 = end-to-end throughout.
    freeze_after: int = 0
    freeze_modalities: tuple[str, ...] = ("imaging",)
    phase1_cases: int = 0
    # Warm start: copy encoders from checkpoints (a file, a run folder or a task name) before training.
    # ``init_from`` is one source for ``init_modalities`` or comma-separated ``modality=source`` pairs
    # (see ``init_sources``). With ``freeze_init`` the copied encoders are frozen from the first epoch:
    # several models then share one CT encoder without each paying for end-to-end CNN epochs, and a
    # fused model can start from encoders its single-modality models trained (see the README).
    init_from: str = ""
    init_modalities: tuple[str, ...] = ("imaging",)
    freeze_init: bool = False
    device: str = "auto"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["modalities"] = list(self.modalities)
        d["freeze_modalities"] = list(self.freeze_modalities)
        d["init_modalities"] = list(self.init_modalities)
        return d


def init_sources(spec: str, default_modalities: tuple[str, ...]) -> list[tuple[str, str]]:
    """``(modality, source)`` pairs of an ``--init-from`` value.

    ``SRC`` copies ``default_modalities`` from SRC; ``imaging=SRC1,notes=SRC2`` names each modality's
    source. ConfigError for an empty modality or source.
    """
    pairs: list[tuple[str, str]] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        m, sep, src = item.partition("=")
        if not sep:
            pairs.extend((d, item) for d in default_modalities)
        elif m.strip() and src.strip():
            pairs.append((m.strip(), src.strip()))
        else:
            raise ConfigError("train.bad_init_from", f"--init-from item {item!r} is not MODALITY=SOURCE")
    return pairs


@dataclass
class TrainResult:
    """Where the run wrote its outputs and how it went."""

    out: Path
    checkpoint: Path
    summary: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """One training run in ``out``; call ``run`` (resumes from ``out/last.pt`` when present)."""

    def __init__(self, cfg: TrainConfig, out: Path, registry: Registry | None = None, progress: bool = True) -> None:
        self.cfg = cfg
        self.out = out
        self.progress = progress
        self.registry = registry or get_registry()
        self.parts = task_parts(self.registry, cfg.task, cfg.modalities or None)
        self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.model = new_model(
            self.parts,
            d_model=cfg.d_model,
            n_layers=cfg.n_layers,
            n_heads=cfg.n_heads,
            dropout=cfg.dropout,
            modality_dropout=cfg.modality_dropout,
            late_fusion=cfg.late_fusion,
        )
        self.modalities = self.model.cfg.modalities
        # Logit columns read by role (new_model has checked the task's heads).
        self.risk_head, self.presence_head = self.parts.spec.head_index("risk"), self.parts.spec.head_index("presence")
        self.init_record = self._init_encoders() if cfg.init_from else []
        # Checked before any input is cached: the head (hence the warm-up) exists only for a model with notes.
        reads_notes = cfg.assertion_weight > 0 and self.model.cfg.assertion_modality in self.modalities
        if reads_notes and cfg.assertion_warmup >= cfg.epochs:
            raise ConfigError(
                "train.bad_warmup", f"--assertion-warmup {cfg.assertion_warmup} leaves no epoch of {cfg.epochs}"
            )
        self._real: dict[str, nn.Module] = {}  # frozen encoders replaced by their replay
        self.cache_stats: dict[str, int] = {}
        self.detection = DetectionConfig()
        # An engine around the untrained model prepares and precomputes inputs exactly as inference will.
        self.prep_engine = InferenceEngine(
            self.model, {}, self.parts.task, self.parts.plugins, self.device, weights_sha256=""
        )

    def _init_encoders(self) -> list[dict[str, Any]]:
        """Copy encoder weights as ``cfg.init_from`` says; ModelError when plugins or spec do not match."""
        by_source: dict[str, list[str]] = {}
        for m, src in init_sources(self.cfg.init_from, self.cfg.init_modalities):
            if m in self.modalities:
                by_source.setdefault(src, []).append(m)
        if not by_source:
            raise ConfigError("train.init_nothing", f"--init-from {self.cfg.init_from!r} names no modality of this run")
        records = []
        for src, mods in by_source.items():
            path = resolve_model_path(src, self.registry)
            payload = read_checkpoint(path)
            for m in mods:
                self._copy_encoder(m, path, payload["meta"], payload["state_dict"])
            record = {"checkpoint": path.name, "sha256": sha256_file(path), "modalities": sorted(mods)}
            event(log, "train.init_from", checkpoint=path.name, sha=record["sha256"][:12], modalities=sorted(mods))
            records.append(record)
        return records

    def _copy_encoder(self, m: str, path: Path, meta: dict[str, Any], state: dict[str, torch.Tensor]) -> None:
        try:
            check_plugin(m, meta["plugins"].get(m) or {"name": "(none)", "version": "0"}, self.parts.plugins[m])
        except ModelError as exc:
            raise ModelError("train.init_mismatch", f"{path.name}: {exc}") from None
        if m == IMAGING and meta["spec"].get("imaging") != spec_to_dict(self.parts.spec).get("imaging"):
            raise ModelError("train.init_mismatch", f"{path.name}: imaging grid differs from the task's")
        prefix = f"encoders.{m}."
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        # A findings detector (``mmclinic train-detector``) belongs to the model it was trained beside: the
        # new run's findings come from its own lesion map until a detector is trained for it.
        if any(k.startswith("detector.") for k in sub):
            sub = {k: v for k, v in sub.items() if not k.startswith("detector.")}
            event(log, "train.init_detector_left", checkpoint=path.name, modality=m)
        try:
            load_trainable(self.model.encoders[m], sub)
        except ModelError as exc:
            raise ModelError("train.init_mismatch", f"{path.name}: {m}: {exc.detail}") from None

    def _frozen_modalities(self) -> tuple[str, ...]:
        """Encoders to freeze: the copied ones with ``freeze_init``, else ``freeze_modalities``."""
        if self.cfg.freeze_init:
            return tuple(m for r in self.init_record for m in r["modalities"])
        return self.cfg.freeze_modalities

    # -- data -------------------------------------------------------------------------------------
    def batch(self, exs: list[Example]) -> tuple[dict[str, dict[str, torch.Tensor]], torch.Tensor, torch.Tensor | None]:
        """Model batch, labels ``[B, 2]`` and lesion targets ``[B, 1, X, Y, Z]`` (zeros where unknown)."""
        inputs = [{**e.inputs, **{m: e.replay[m] for m in self._real}} for e in exs]
        b = to_device(batch_of(inputs, self.modalities), self.device)
        y = torch.stack([e.y for e in exs]).to(self.device)
        if IMAGING not in self.modalities:
            return b, y, None
        size = self.parts.spec.imaging.size
        lt = torch.stack([e.lesion if e.lesion is not None else torch.zeros(1, *size) for e in exs])
        return b, y, lt.to(self.device)

    # -- loss -------------------------------------------------------------------------------------
    def loss(
        self,
        model: FusionModel,
        batch: dict[str, dict[str, torch.Tensor]],
        y: torch.Tensor,
        lesion: torch.Tensor | None,
        has_target: torch.Tensor | None,
        pos_weight: torch.Tensor,
        train: bool,
        assertions: torch.Tensor | None = None,
        labels: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Total loss and the case logits (``assertions``: ``assertion_targets``; ``labels``: False in warm-up)."""
        cfg = self.cfg
        with autocast(self.device):
            out = model(batch, modality_dropout=train)
        logits = out.logits.float()
        bce = nn.functional.binary_cross_entropy_with_logits
        loss = bce(logits, y, pos_weight=pos_weight) * float(labels)
        vis = model.visible(batch)
        for i, m in enumerate(self.modalities):
            rows = vis[:, i]
            if labels and cfg.aux_weight > 0 and rows.any():
                loss = loss + cfg.aux_weight * bce(out.aux_logits[m][rows].float(), y[rows], pos_weight=pos_weight)
        a_loss = assertion_loss(out.assertion_logits, assertions) if cfg.assertion_weight > 0 else None
        if a_loss is not None:
            loss = loss + cfg.assertion_weight * a_loss
        if lesion is not None and has_target is not None and has_target.any() and cfg.lesion_weight > 0:
            for extras in out.extras.values():
                if LESION_KEY not in extras or not extras[LESION_KEY].requires_grad:
                    continue  # a frozen encoder's lesion map has nothing left to learn
                pred = extras[LESION_KEY][has_target].float()
                tgt = lesion[has_target]
                lw = torch.tensor(cfg.lesion_pos_weight, device=pred.device)
                l_bce = bce(pred, tgt, pos_weight=lw)
                prob = torch.sigmoid(pred)
                inter = (prob * tgt).flatten(1).sum(1)
                denom = (prob + tgt).flatten(1).sum(1)
                # Dice only where a lesion exists: on empty scans it is undefined, BCE handles those.
                has_les = tgt.flatten(1).sum(1) > 0
                l_dice = (1 - (2 * inter + 1) / (denom + 1))[has_les].mean() if has_les.any() else pred.sum() * 0
                loss = loss + cfg.lesion_weight * (l_bce + l_dice)
        return loss, logits

    def predict_logits(self, exs: list[Example]) -> torch.Tensor:
        """Case logits (no dropout) for a list of examples."""
        return self._predict(exs)[0]

    @torch.no_grad()
    def _predict(self, exs: list[Example]) -> tuple[torch.Tensor, dict[str, float]]:
        """Case logits and, with an assertion head, how often it reads each item right (one pass)."""
        self.model.eval()
        outs, read, targets = [], [], []
        for i in range(0, len(exs), 32):
            chunk = exs[i : i + 32]
            b, _, _ = self.batch(chunk)
            with autocast(self.device):
                out = self.model(b)
            outs.append(out.logits.float().cpu())
            t = assertion_targets(self.model, chunk, b)
            if t is not None and out.assertion_logits is not None:
                read.append(out.assertion_logits.float().cpu())
                targets.append(t)
        logits = torch.cat(outs) if outs else torch.zeros(0, 2)
        accuracy = accuracy_by_item(self.model, torch.cat(read), torch.cat(targets)) if read else {}
        return logits, accuracy

    # -- run --------------------------------------------------------------------------------------
    def run(self, manifest: Path | Cohort, cache_dir: Path | None = None, resume: bool = True) -> TrainResult:
        """Cache, split, train with early stopping, calibrate on validation, write ``model.pt``."""
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        cohort = manifest if isinstance(manifest, Cohort) else load_cohort(manifest, self.parts.spec.labels)
        cache = CaseCache(cache_dir or self.out / "cache", self.prep_engine)
        examples, rejected = build_examples(cohort, cache, self.parts, self.progress)
        self.cache_stats = {"hits": cache.hits, "misses": cache.misses}
        self.assertion_record = attach_assertions(self.model, cohort, examples) if cfg.assertion_weight > 0 else {}
        train_cases, _ = patient_split([Case(e.case_id, e.patient_id) for e in examples], cfg.val_fraction, cfg.seed)
        train_ids = {c.case_id for c in train_cases}
        train = [e for e in examples if e.case_id in train_ids]
        val = [e for e in examples if e.case_id not in train_ids]
        if not train or not val:
            raise InputError("train.too_few_cases", f"{len(train)} training / {len(val)} validation cases")
        overlap = {e.patient_id for e in train} & {e.patient_id for e in val}
        assert not overlap, "patient-level split violated"

        y_train = torch.stack([e.y for e in train])
        pos = y_train.sum(0)
        # Positive weight per head (class imbalance), capped so a rare label cannot dominate the loss.
        pos_weight = ((len(train) - pos) / pos.clamp(min=1)).clamp(1.0, cfg.max_pos_weight).to(self.device)
        self.model.logit_offset.copy_(-torch.log(pos_weight).cpu())  # type: ignore[operator]

        normalization = self._fit_normalization(train)
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
        state: dict[str, Any] = {"epoch": 0, "best": -math.inf, "best_epoch": 0, "bad": 0, "history": [], "stopped": ""}
        meta_train = {
            "config": cfg.to_dict(),
            "manifest": str(manifest) if isinstance(manifest, Path) else "(in-memory cohort)",
            "n_train": len(train),
            "n_val": len(val),
            "rejected": len(rejected),
            "pos_weight": pos_weight.tolist(),
            "init_from": self.init_record,
            "assertions": self.assertion_record,
            "data_sha256": _data_fingerprint(train, val),
        }
        if resume and (self.out / LAST).is_file():
            state = self._resume(opt, sched, meta_train)
        start = time.monotonic()
        self.model.to(self.device)
        phase1 = self._phase1_subset(train)
        while state["epoch"] < cfg.epochs and not state["stopped"]:
            epoch = state["epoch"] + 1
            t0 = time.monotonic()
            in_phase1 = 0 < epoch <= cfg.freeze_after
            if (cfg.freeze_init or (cfg.freeze_after and not in_phase1)) and not self._real:
                self._freeze(train + val)
            warmup = epoch <= cfg.assertion_warmup and self.model.cfg.has_assertion_head
            train_loss = self._epoch(phase1 if in_phase1 else train, opt, pos_weight, epoch, labels=not warmup)
            sched.step()
            val_logits, read = self._predict(val)
            y_val = torch.stack([e.y for e in val])
            risk_h, presence_h = self.risk_head, self.presence_head
            val_auc = auroc(val_logits[:, risk_h].numpy(), y_val[:, risk_h].numpy())
            tumor_auc = auroc(val_logits[:, presence_h].numpy(), y_val[:, presence_h].numpy())
            score = val_auc if np.isfinite(val_auc) else -float(train_loss)
            rec = {
                "epoch": epoch,
                "train_loss": train_loss,
                "val_auroc": val_auc,
                "val_tumor_auroc": tumor_auc,
                "seconds": round(time.monotonic() - t0, 1),
            }
            if read:
                rec["val_assertion_accuracy"] = float(np.mean(list(read.values())))
            state["history"].append(rec)
            event(
                log,
                "train.epoch",
                epoch=epoch,
                loss=round(train_loss, 4),
                val_auroc=round(val_auc, 4),
                **({"val_assertions": round(rec["val_assertion_accuracy"], 4)} if read else {}),
            )
            state["epoch"] = epoch
            if warmup:
                pass  # the case heads have not trained yet: nothing to select or to lose patience over
            elif score > state["best"] + 1e-4:
                state.update(best=score, best_epoch=epoch, bad=0)
                with self._real_encoders():
                    save_checkpoint(self.out / BEST, self.model, self._meta(normalization, meta_train))
            elif not in_phase1:  # phase 1 is a fixed warm-up; patience counts from phase 2
                state["bad"] += 1
                if state["bad"] >= cfg.patience:
                    state["stopped"] = "early_stopping"
            if cfg.max_minutes and (time.monotonic() - start) / 60 > cfg.max_minutes:
                state["stopped"] = state["stopped"] or "time_limit"
            self._save_last(opt, sched, state, normalization, meta_train)
        return self._finish(val, state, normalization, meta_train, rejected)

    def _phase1_subset(self, train: list[Example]) -> list[Example]:
        n = self.cfg.phase1_cases
        if not self.cfg.freeze_after or self.cfg.freeze_init or n <= 0 or n >= len(train):
            return train
        idx = np.random.default_rng(self.cfg.seed).choice(len(train), size=n, replace=False)
        return [train[i] for i in sorted(idx)]

    @torch.no_grad()
    def _freeze(self, examples: list[Example]) -> None:
        """Compute each frozen encoder's outputs once per case and replay them from now on."""
        for m in self._frozen_modalities():
            if m not in self.modalities:
                continue
            enc = self.model.encoders[m].eval()
            with progress_bar(f"freezing {m}", len(examples), enabled=self.progress) as advance:
                for i in range(0, len(examples), 16):
                    chunk = examples[i : i + 16]
                    b = to_device(batch_of([{m: e.inputs[m]} for e in chunk], (m,)), self.device)
                    with autocast(self.device):
                        rows = frozen_outputs(enc, b[m])
                    for r, e in enumerate(chunk):
                        one = {
                            k: v[r : r + 1].float().cpu() if v.is_floating_point() else v[r : r + 1].cpu()
                            for k, v in rows.items()
                        }
                        src = e.inputs[m]
                        e.replay[m] = CachedInput(one, src.present, src.fingerprint, src.meta)
                        advance()
            self._real[m] = enc
            # A trunk/head encoder keeps training its head on the cached trunk outputs.
            self.model.encoders[m] = replay_for(enc)
            event(log, "train.frozen", modality=m, cases=len(examples))

    @contextlib.contextmanager
    def _real_encoders(self) -> Iterator[None]:
        """Put frozen encoders back while saving, so checkpoints always hold the real weights."""
        replay = {m: self.model.encoders[m] for m in self._real}
        for m, enc in self._real.items():
            self.model.encoders[m] = enc
        try:
            yield
        finally:
            for m, rep in replay.items():
                self.model.encoders[m] = rep

    def _fit_normalization(self, train: list[Example]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for m in self.modalities:
            enc = self.model.encoders[m]
            fit = getattr(enc, "fit_normalization", None)
            if callable(fit):
                # Normalisation statistics come from training cases only (no validation leakage).
                fitted = fit(e.inputs[m].batch for e in train if e.inputs[m].present)
                persistent = set(enc.state_dict())
                # The statistics travel in the state dict; a readable copy goes into the metadata.
                stats = {k: b.tolist() for k, b in enc.named_buffers() if k in persistent and b.is_floating_point()}
                out[m] = {"fit": fitted, "buffers": stats}
        return json.loads(json.dumps(out, default=str))  # type: ignore[no-any-return]

    def _epoch(
        self,
        train: list[Example],
        opt: torch.optim.Optimizer,
        pos_weight: torch.Tensor,
        epoch: int,
        labels: bool = True,
    ) -> float:
        cfg = self.cfg
        self.model.train()
        torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout / modality dropout: reproducible after resume
        order = np.random.default_rng(cfg.seed * 1000 + epoch).permutation(len(train))
        total, n = 0.0, 0
        steps = range(0, len(order), cfg.batch_size)
        with progress_bar(f"epoch {epoch}", len(steps), enabled=self.progress) as advance:
            for i in steps:
                exs = [train[j] for j in order[i : i + cfg.batch_size]]
                b, y, lt = self.batch(exs)
                has_t = torch.tensor([e.lesion is not None for e in exs], device=self.device)
                targets = assertion_targets(self.model, exs, b)
                loss, _ = self.loss(
                    self.model, b, y, lt, has_t, pos_weight, train=True, assertions=targets, labels=labels
                )
                opt.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 5.0)
                opt.step()
                total += float(loss.detach()) * len(exs)
                n += len(exs)
                advance()
        return total / max(n, 1)

    def _meta(
        self, normalization: dict[str, Any], training: dict[str, Any], metrics: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        return model_meta(
            self.parts,
            self.model,
            detection=self.detection,
            normalization=normalization,
            training=training,
            metrics=metrics,
        )

    def _save_last(
        self,
        opt: torch.optim.Optimizer,
        sched: Any,
        state: dict[str, Any],
        norm: dict[str, Any],
        training: dict[str, Any],
    ) -> None:
        extra = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "train_state": json.dumps(state)}
        with self._real_encoders():
            save_checkpoint(self.out / LAST, self.model, self._meta(norm, training), extra=extra)

    def _resume(self, opt: torch.optim.Optimizer, sched: Any, training: dict[str, Any]) -> dict[str, Any]:
        """Continue from ``last.pt``; refused when the model, the data or a setting that shapes the run changed.

        Only the schedule's length may change between the runs (``RESUMABLE_CHANGES``): the epochs
        already trained do not depend on it. Anything else (another manifest or split, other inputs,
        learning rate, seed, modalities, warm start) would make the resumed run a mixture of two runs.
        """
        payload = read_checkpoint(self.out / LAST, with_extra=True)
        if payload["meta"]["fusion"] != self.model.cfg.to_dict():
            raise ConfigError("train.resume_mismatch", f"{self.out / LAST} was written with another model config")
        before = payload["meta"].get("training", {})
        changed = sorted(
            k
            for k in set(before.get("config", {})) | set(training["config"])
            if k not in RESUMABLE_CHANGES and before.get("config", {}).get(k) != training["config"].get(k)
        )
        if before.get("data_sha256", training["data_sha256"]) != training["data_sha256"]:
            changed.append("data (cases, labels or inputs)")
        if before.get("init_from") != training["init_from"]:
            changed.append("init_from checkpoints")
        if changed:
            raise ConfigError(
                "train.resume_mismatch",
                f"{self.out / LAST} was written by another run ({', '.join(changed)} differ); "
                "use a new --out folder, or delete last.pt to start over",
            )
        self.model.load_state_dict(payload["state_dict"], strict=False)
        opt.load_state_dict(payload["optimizer"])
        sched.load_state_dict(payload["scheduler"])
        state: dict[str, Any] = json.loads(payload["train_state"])
        event(log, "train.resumed", epoch=state["epoch"], best_epoch=state["best_epoch"])
        return state

    @torch.no_grad()
    def _tune_detection(self, val: list[Example]) -> dict[str, Any]:
        """Choose the voxel threshold and the findings' cut-off on validation (``tune_detection``)."""
        if IMAGING not in self.modalities:
            return {}
        exs = [e for e in val if e.gt_lesions is not None and e.inputs[IMAGING].present]
        if not exs:
            return {}
        spacing = self.parts.spec.imaging.spacing_mm
        plugin = self.parts.plugins[IMAGING]
        found = []
        self.model.eval()
        for i in range(0, len(exs), 16):
            chunk = exs[i : i + 16]
            b, _, _ = self.batch(chunk)
            with autocast(self.device):
                out = self.model(b)
            found_logits = findings_logits(out.extras[IMAGING])
            assert found_logits is not None
            prob = torch.sigmoid(found_logits.float())[:, 0].cpu().numpy()
            found += [candidates(prob[r], plugin, e.inputs[IMAGING].meta, spacing) for r, e in enumerate(chunk)]
        self.detection, summary = tune_detection(found, [e.gt_lesions or [] for e in exs], voxel_mm=min(spacing))
        return summary

    def _finish(
        self,
        val: list[Example],
        state: dict[str, Any],
        norm: dict[str, Any],
        training: dict[str, Any],
        rejected: dict[str, str],
    ) -> TrainResult:
        """Best weights → Platt scaling per head + operating threshold on validation → ``model.pt``."""
        best = read_checkpoint(self.out / BEST)
        for m, enc in self._real.items():  # the best weights may predate the freeze: use real encoders
            self.model.encoders[m] = enc
        self._real = {}
        self.model.load_state_dict(best["state_dict"], strict=False)
        raw, assertion_accuracy = self._predict(val)
        adjusted = self.model.adjusted(raw)
        y_val = torch.stack([e.y for e in val])
        fits = [fit_platt(adjusted[:, h], y_val[:, h]) for h in range(raw.shape[1])]
        temps = [t for t, _ in fits]
        # sigmoid((z + offset) / T + s) == sigmoid((z + offset + s·T) / T): the shift folds into the
        # logit offset, so checkpoints keep their two calibration buffers and older ones load unchanged.
        shifts = torch.tensor([s * t for t, s in fits], dtype=torch.float32)
        self.model.logit_offset.add_(shifts)  # type: ignore[operator]
        self.model.temperature.copy_(torch.tensor(temps))  # type: ignore[operator]
        probs = self.model.calibrated_probs(raw).numpy()
        risk_h, presence_h = self.risk_head, self.presence_head
        risk, y_m = probs[:, risk_h], y_val[:, risk_h].numpy()
        val_detection = self._tune_detection(val)
        metrics = {
            "val_auroc": auroc(risk, y_m),
            "val_ece": ece(risk, y_m),
            "val_tumor_auroc": auroc(probs[:, presence_h], y_val[:, presence_h].numpy()),
            "threshold": youden_threshold(risk, y_m),  # operating point chosen on validation only
            "temperature": temps,
            "calibration_shift": [s for _, s in fits],
            "best_epoch": state["best_epoch"],
            "epochs_run": state["epoch"],
            "stopped": state["stopped"] or "max_epochs",
            "val_detection": val_detection,
            **({"val_assertion_accuracy": assertion_accuracy} if assertion_accuracy else {}),
        }
        training = {**training, "history": state["history"]}
        ckpt = self.out / CHECKPOINT_NAME
        sha = save_checkpoint(ckpt, self.model, self._meta(norm, training, metrics))
        summary = {
            "checkpoint": str(ckpt),
            "weights_sha256": sha,
            **metrics,
            "n_rejected": len(rejected),
            "cache": dict(self.cache_stats),
            "rejected_reasons": sorted(set(rejected.values())),
            "history": state["history"],
        }
        (self.out / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
        event(log, "train.done", auroc=round(metrics["val_auroc"], 4), epochs=state["epoch"], sha=sha[:12])
        return TrainResult(self.out, ckpt, summary)


def train(
    manifest: Path | Cohort,
    out: Path,
    cfg: TrainConfig | None = None,
    cache_dir: Path | None = None,
    registry: Registry | None = None,
    resume: bool = True,
    progress: bool = True,
) -> TrainResult:
    """Library entry point of ``mmclinic train``."""
    return Trainer(cfg or TrainConfig(), out, registry, progress).run(manifest, cache_dir, resume)
