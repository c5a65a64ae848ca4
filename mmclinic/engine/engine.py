"""Inference engine: load a checkpoint, prepare cases through modality plugins, predict in batches."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mmclinic import __version__
from mmclinic.case import Case, Finding, Prediction, Provenance, sha256_file
from mmclinic.engine.checkpoint import (
    CHECKPOINT_NAME,
    check_compatible,
    load_trainable,
    preprocessing_hash,
    read_checkpoint,
)
from mmclinic.engine.device import autocast, device_label, resolve_device
from mmclinic.engine.geometry import voxel_to_patient
from mmclinic.errors import InputError, MmclinicError, ModelError, PluginError
from mmclinic.logs import event
from mmclinic.model.batching import concat_batches, detach_cpu, to_device
from mmclinic.model.detection import (
    DetectionConfig,
    VoxelFinding,
    find_lesion_regions,
    finding_risks,
    isolation_masks,
)
from mmclinic.model.fusion import Batch, FusionConfig, FusionModel, findings_logits
from mmclinic.plugin_api import EncoderOutput, ModalityInput, ModalityPlugin, TaskPlugin, TaskSpec
from mmclinic.registry import Registry, get_registry

log = logging.getLogger(__name__)


@dataclass
class PreparedCase:
    """A case after every modality plugin loaded and validated its input (no model work yet)."""

    case_id: str
    inputs: dict[str, ModalityInput]  # present modalities only
    fingerprints: dict[str, str]
    timings_ms: dict[str, float] = field(default_factory=dict)
    labels: dict[str, float] = field(default_factory=dict)

    @property
    def modalities_present(self) -> tuple[str, ...]:
        """Modalities with an input, in a stable order."""
        return tuple(sorted(self.inputs))

    def without(self, *modalities: str) -> PreparedCase:
        """Copy with some modalities removed (test-time ablation)."""
        keep = {m: v for m, v in self.inputs.items() if m not in modalities}
        fps = {k: v for k, v in self.fingerprints.items() if k.split(":", 1)[0] in keep}
        return replace(self, inputs=keep, fingerprints=fps)


@dataclass
class BatchResult:
    """Numbers for one batch (row order = input order)."""

    logits: np.ndarray[Any, np.dtype[np.float32]]  # [B, number of task heads], before temperature
    tumor_probability: np.ndarray[Any, np.dtype[np.float32]]
    malignancy_risk: np.ndarray[Any, np.dtype[np.float32]]
    lesion_prob: np.ndarray[Any, np.dtype[np.float32]] | None  # [B, X, Y, Z]
    lesion_modality: str | None
    contributions: list[dict[str, float]]
    timings_ms: dict[str, float]
    # ``run(..., ablations=True)``: per modality, the calibrated malignancy risk with it removed.
    ablations: dict[str, np.ndarray[Any, np.dtype[np.float32]]] = field(default_factory=dict)


def build_model(fusion: dict[str, Any], spec: TaskSpec, plugins: dict[str, ModalityPlugin]) -> FusionModel:
    """A fresh FusionModel with each modality plugin's encoder."""
    cfg = FusionConfig.from_dict(fusion)
    encoders = {m: plugins[m].build_encoder(cfg.d_model, spec) for m in cfg.modalities}
    return FusionModel(encoders, cfg)


def resolve_plugins(registry: Registry, modalities: Sequence[str]) -> dict[str, ModalityPlugin]:
    """The installed modality plugin for each modality key; ModelError when one is missing."""
    out: dict[str, ModalityPlugin] = {}
    for m in modalities:
        try:
            plugin = registry.modality_for(m)
        except PluginError as exc:
            raise ModelError("model.plugin_missing", f"no installed plugin reads modality {m!r}") from exc
        assert isinstance(plugin, ModalityPlugin)
        out[m] = plugin
    return out


def resolve_model_path(model: str | Path, registry: Registry) -> Path:
    """A checkpoint file from a file path, a training-run folder, or a task plugin name."""
    p = Path(model)
    if p.is_dir():
        return p / CHECKPOINT_NAME
    if p.is_file() or p.suffix == ".pt":
        return p
    try:
        task = registry.get("task", str(model))
    except PluginError as exc:
        raise ModelError("model.not_found", f"{model!r} is neither a checkpoint, a run folder nor a task") from exc
    assert isinstance(task, TaskPlugin)
    weights = task.weights_path()
    if weights is None:
        raise ModelError("model.no_weights", f"task {model!r} ships no weights")
    return weights


def model_task(meta: dict[str, Any], registry: Registry) -> TaskPlugin:
    """The installed task plugin a checkpoint's meta names; ModelError when it is not installed."""
    try:
        task = registry.get("task", meta["task"]["name"])
    except PluginError as exc:
        raise ModelError("model.task_missing", f"task plugin {meta['task']['name']!r} is not installed") from exc
    assert isinstance(task, TaskPlugin)
    return task


class InferenceEngine:
    """One loaded model. Thread-compatible for ``prepare``; ``predict*`` runs the model in batches."""

    def __init__(
        self,
        model: FusionModel,
        meta: dict[str, Any],
        task: TaskPlugin,
        plugins: dict[str, ModalityPlugin],
        device: torch.device,
        weights_sha256: str,
        batch_size: int = 8,
    ) -> None:
        self.model = model.to(device).eval()
        self.meta = meta
        self.task = task
        self.spec = task.spec()
        # Which logit is which comes from the task's declared heads (checked against the checkpoint).
        self.presence_head, self.risk_head = self.spec.head_index("presence"), self.spec.head_index("risk")
        self.plugins = plugins
        self.device = device
        self.weights_sha256 = weights_sha256
        self.batch_size = batch_size
        self.detection = DetectionConfig(**meta.get("detection", {}))
        self.task_name = task.name
        self._plugin_versions = {p.name: p.version for p in plugins.values()}
        # Provenance records the preprocessing actually in force (plugin configs may differ from training).
        self._preprocessing_hash = preprocessing_hash(self.spec, plugins)
        if meta.get("preprocessing_hash") and meta["preprocessing_hash"] != self._preprocessing_hash:
            event(log, "model.preprocessing_differs", level=logging.WARNING, task=task.name)

    # -- loading ----------------------------------------------------------------------------------
    @classmethod
    def load(
        cls,
        model: str | Path = "tumor-risk",
        device: str | torch.device = "auto",
        registry: Registry | None = None,
        batch_size: int = 8,
    ) -> InferenceEngine:
        """Load a task's bundled weights, a run folder or a checkpoint file; validate it against plugins."""
        reg = registry or get_registry()
        path = resolve_model_path(model, reg)
        payload = read_checkpoint(path)
        return cls.from_payload(payload, reg, device, sha256_file(path), batch_size)

    @classmethod
    def from_payload(
        cls,
        payload: dict[str, Any],
        registry: Registry,
        device: str | torch.device = "auto",
        weights_sha256: str = "",
        batch_size: int = 8,
    ) -> InferenceEngine:
        """Build from an in-memory checkpoint (``{"meta", "state_dict"}``)."""
        meta = payload["meta"]
        task = model_task(meta, registry)
        spec = task.spec()
        plugins = resolve_plugins(registry, list(meta["plugins"]))
        check_compatible(meta, spec, plugins, task.version)
        model = build_model(meta["fusion"], spec, plugins)
        load_trainable(model, payload["state_dict"])
        dev = resolve_device(device)
        event(log, "model.loaded", task=task.name, weights=weights_sha256[:12], device=dev.type)
        return cls(model, meta, task, plugins, dev, weights_sha256, batch_size)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities the model was trained on."""
        return self.model.cfg.modalities

    # -- preparation ------------------------------------------------------------------------------
    def load_modality(self, case: Case, modality: str) -> tuple[ModalityInput | None, float]:
        """One modality's validated input (``None`` when absent) and the load time in ms."""
        ref = case.inputs.get(modality)
        if ref is None:
            return None, 0.0
        t0 = time.perf_counter()
        try:
            mi = self.plugins[modality].load(ref, self.spec)
        except MmclinicError:
            raise
        except Exception as exc:  # a plugin bug on odd input must still surface as bad input
            event(log, "case.load_failed", case=case.case_id, modality=modality, error=type(exc).__name__)
            raise InputError(f"{modality}.load_failed", f"{type(exc).__name__}: {exc}") from exc
        ms = (time.perf_counter() - t0) * 1000.0
        if mi.summary.get("present") is False:
            return None, ms  # e.g. an empty note list: the plugin says "nothing here", so the modality is absent
        return mi, ms

    def check_modalities(self, present: Sequence[str]) -> None:
        """InputError when a required modality is missing or nothing usable is present."""
        missing = [m for m in self.spec.required_modalities if m in self.modalities and m not in present]
        if missing:
            raise InputError("case.missing_modality", f"required modality absent: {', '.join(missing)}")
        if not present:
            raise InputError("case.no_modalities", f"none of {', '.join(self.modalities)} is present")

    def prepare(self, case: Case) -> PreparedCase:
        """Run each modality plugin's ``load``; InputError for bad or insufficient input."""
        inputs: dict[str, ModalityInput] = {}
        fps: dict[str, str] = {}
        timings: dict[str, float] = {}
        for m in self.modalities:
            mi, ms = self.load_modality(case, m)
            if m in case.inputs:
                timings[f"load.{m}"] = ms
            if mi is not None:
                inputs[m] = mi
                fps.update({f"{m}:{k}": v for k, v in mi.fingerprint.items()})
        self.check_modalities(list(inputs))
        return PreparedCase(case.case_id, inputs, fps, timings, dict(case.labels))

    def case_batch(self, item: PreparedCase) -> Batch:
        """One case's collated + precomputed inputs (batch size 1, CPU): the unit the trainer caches.

        The frozen ``precompute`` runs per case so cached training inputs and live inference inputs
        are produced by exactly the same code (no padding to other cases' lengths).
        """
        out: Batch = {}
        with torch.inference_mode():
            for m in self.modalities:
                mi = item.inputs.get(m)
                b = self.plugins[m].collate([mi], self.spec)
                b = to_device({m: b}, self.device)[m]
                enc = self.model.encoders[m]
                fn = getattr(enc, "precompute", None)
                with autocast(self.device):
                    b = fn(b) if callable(fn) else b
                out[m] = detach_cpu(b)
        return out

    # -- model ------------------------------------------------------------------------------------
    def run(
        self, batch: Batch, contributions: bool = True, hide: torch.Tensor | None = None, ablations: bool = False
    ) -> BatchResult:
        """Model on a precomputed batch: calibrated probabilities, lesion map, leave-one-out contributions.

        A modality's contribution is the change in calibrated malignancy risk when that modality is
        removed from the case (same encoder outputs, one extra fusion pass per modality): positive means
        the modality raised the risk. ``ablations``: also each modality's removal for every case, from
        the same encoder outputs (an evaluation's ablation rows cost no second encoder pass).
        """
        timings: dict[str, float] = {}
        model = self.model
        with torch.inference_mode(), autocast(self.device):
            b = to_device(batch, self.device)
            t0 = time.perf_counter()
            encoded = model.encode(b)
            t1 = time.perf_counter()
            vis = model.visible(b)
            base_hide = torch.zeros_like(vis) if hide is None else hide.to(vis.device)
            logits = model.fuse(encoded, base_hide).float()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            t2 = time.perf_counter()
            probs = model.calibrated_probs(logits)
            contrib: list[dict[str, float]] = [{} for _ in range(vis.shape[0])]
            if contributions:
                shown = vis & ~base_hide
                for i, m in enumerate(model.cfg.modalities):
                    if not shown[:, i].any():
                        continue
                    h = base_hide.clone()
                    h[:, i] = True
                    p_wo = model.calibrated_probs(model.fuse(encoded, h).float())[:, self.risk_head]
                    delta = (probs[:, self.risk_head] - p_wo).cpu().numpy()
                    for r in np.nonzero(shown[:, i].cpu().numpy())[0]:
                        contrib[int(r)][m] = float(delta[r])
            t3 = time.perf_counter()
            ablated = self._ablations(encoded, vis) if ablations else {}
            lesion, lesion_mod = None, None
            for m, eo in encoded.items():
                found = findings_logits(eo.extras)
                if found is not None:
                    lesion = torch.sigmoid(found.float())[:, 0].cpu().numpy()
                    lesion_mod = m
        timings.update(encode=(t1 - t0) * 1e3, fusion=(t2 - t1) * 1e3, contributions=(t3 - t2) * 1e3)
        return BatchResult(
            logits.cpu().numpy(),
            probs[:, self.presence_head].cpu().numpy(),
            probs[:, self.risk_head].cpu().numpy(),
            lesion,
            lesion_mod,
            contrib,
            timings,
            ablated,
        )

    def _ablations(
        self, encoded: dict[str, EncoderOutput], vis: torch.Tensor
    ) -> dict[str, np.ndarray[Any, np.dtype[np.float32]]]:
        """Calibrated malignancy risk with each modality removed for every case (one fusion pass each)."""
        out: dict[str, np.ndarray[Any, np.dtype[np.float32]]] = {}
        for i, m in enumerate(self.model.cfg.modalities):
            hide = torch.zeros_like(vis)
            hide[:, i] = True
            probs = self.model.calibrated_probs(self.model.fuse(encoded, hide).float())
            out[m] = probs[:, self.risk_head].cpu().numpy()
        return out

    # -- predictions ------------------------------------------------------------------------------
    def isolated_risks(self, batch: Batch, modality: str, regions: np.ndarray[Any, Any], n: int) -> list[float] | None:
        """Calibrated risk of one case with each of its ``n`` findings as its only lesion; None if unsupported.

        ``batch``: the case's precomputed batch; ``regions``: ``find_lesion_regions``'s voxel labels. The
        ``modality`` encoder's ``isolate`` re-reads the other findings' voxels as background; the other
        modalities' outputs are the case's own, so each risk is the same kind of number as the case risk.
        """
        isolate = getattr(self.model.encoders[modality], "isolate", None)
        if not callable(isolate):
            return None
        model = self.model
        with torch.inference_mode(), autocast(self.device):
            b = to_device(batch, self.device)
            suppress = torch.from_numpy(isolation_masks(regions, n))[:, None].to(self.device)
            others = model.encode({m: v for m, v in b.items() if m != modality})
            encoded = {
                m: EncoderOutput(eo.tokens.expand(n, -1, -1), eo.pad_mask.expand(n, -1)) for m, eo in others.items()
            }
            eo = isolate(b[modality], suppress)
            encoded[modality] = EncoderOutput(eo.tokens, eo.pad_mask)
            probs = model.calibrated_probs(model.fuse(encoded).float())
        return [float(v) for v in probs[:, self.risk_head].cpu()]

    def risks_of(
        self,
        found: Sequence[VoxelFinding],
        regions: np.ndarray[Any, Any],
        case_risk: float,
        modality: str,
        batch: Batch | None,
    ) -> list[float]:
        """Each finding's malignancy risk (see ``findings``)."""
        if len(found) == 1:
            return [case_risk]  # the only lesion: isolating it changes nothing
        got = self.isolated_risks(batch, modality, regions, len(found)) if found and batch is not None else None
        return got if got is not None else finding_risks(case_risk, [f.confidence for f in found])

    def findings(
        self,
        item: PreparedCase,
        lesion_prob: np.ndarray[Any, Any],
        case_risk: float,
        modality: str,
        batch: Batch | None = None,
    ) -> tuple[Finding, ...]:
        """Findings of one case from its lesion map, centres mapped to patient LPS mm, each with its risk.

        A finding's malignancy risk is the case's risk were it the case's only lesion (``isolated_risks``;
        with one finding, the case risk itself). Without ``batch`` or an encoder that can isolate, the
        case risk is shared by detection confidence (``finding_risks``).
        """
        if modality not in item.inputs:
            return ()
        found, regions = find_lesion_regions(lesion_prob, self.spec.imaging.spacing_mm, self.detection)
        risks = self.risks_of(found, regions, case_risk, modality, batch)
        m = modality
        meta = item.inputs[m].meta
        out = []
        for f, risk in zip(found, risks, strict=True):
            out.append(
                Finding(
                    center_mm=voxel_to_patient(self.plugins[m], meta, f.center_voxel),
                    diameter_mm=round(f.diameter_mm, 2),
                    confidence=f.confidence,
                    malignancy_risk=risk,
                    center_voxel=(
                        round(f.center_voxel[0]),
                        round(f.center_voxel[1]),
                        round(f.center_voxel[2]),
                    ),
                )
            )
        return tuple(out)

    def predict_prepared(self, items: Sequence[PreparedCase], contributions: bool = True) -> list[Prediction]:
        """Predictions for prepared cases, batched by ``batch_size``."""
        preds: list[Prediction] = []
        for start in range(0, len(items), self.batch_size):
            chunk = list(items[start : start + self.batch_size])
            preds.extend(self._predict_chunk(chunk, contributions))
        return preds

    def _predict_chunk(self, chunk: list[PreparedCase], contributions: bool) -> list[Prediction]:
        t0 = time.perf_counter()
        batches = [self.case_batch(it) for it in chunk]
        t_pre = (time.perf_counter() - t0) * 1e3 / len(chunk)
        res = self.run(concat_batches(batches), contributions=contributions)
        n = len(chunk)
        out: list[Prediction] = []
        for r, item in enumerate(chunk):
            t1 = time.perf_counter()
            risk = float(res.malignancy_risk[r])
            finds: tuple[Finding, ...] = ()
            if res.lesion_prob is not None and res.lesion_modality is not None:
                finds = self.findings(item, res.lesion_prob[r], risk, res.lesion_modality, batches[r])
            timings = dict(item.timings_ms)
            timings["precompute"] = t_pre
            timings.update({k: v / n for k, v in res.timings_ms.items()})
            timings["postprocess"] = (time.perf_counter() - t1) * 1e3
            prov = Provenance(
                weights_sha256=self.weights_sha256,
                task=self.task.name,
                task_version=self.task.version,
                plugin_versions=dict(self._plugin_versions),
                mmclinic_version=__version__,
                preprocessing_hash=self._preprocessing_hash,
                input_fingerprints=dict(item.fingerprints),
                device=device_label(self.device),
                timings_ms={k: round(v, 3) for k, v in timings.items()},
                modalities_present=item.modalities_present,
            )
            out.append(
                Prediction(
                    case_id=item.case_id,
                    task=self.task.name,
                    tumor_probability=float(res.tumor_probability[r]),
                    malignancy_risk=risk,
                    findings=finds,
                    modality_contributions=res.contributions[r],
                    provenance=prov,
                )
            )
        event(log, "predict.batch", cases=n, device=self.device.type)
        return out

    def predict(self, cases: Sequence[Case]) -> list[Prediction]:
        """Prepare and predict; any bad case raises InputError (use ``prepare`` per case to isolate)."""
        return self.predict_prepared([self.prepare(c) for c in cases])
