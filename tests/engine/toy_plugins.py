"""Tiny in-process modality/task plugins (a throw-away imaging + tabular pair) for model/engine/training tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from mmclinic.case import sha256_bytes
from mmclinic.errors import InputError
from mmclinic.plugin_api import (
    EncoderOutput,
    FeatureSpec,
    HeadSpec,
    ImagingSpec,
    ModalityInput,
    ModalityPlugin,
    TaskPlugin,
    TaskSpec,
)
from mmclinic.registry import PluginRecord, Registry

GRID = (8, 8, 4)
SPACING = (5.0, 5.0, 5.0)
ORIGIN = (-20.0, -20.0, 100.0)
AFFINE = np.array(
    [[SPACING[0], 0, 0, ORIGIN[0]], [0, SPACING[1], 0, ORIGIN[1]], [0, 0, SPACING[2], ORIGIN[2]], [0, 0, 0, 1]]
)


class ToyImagingEncoder(nn.Module):
    """Conv features → 4 pooled tokens; a 1x1x1 lesion head on the raw volume (so tests can set it).

    Split like the real CT encoder: ``trunk`` (conv + lesion map, what a trainer freezes) and ``head``
    (a trainable projection of the trunk's pooled features).
    """

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, d_model, 3, padding=1)
        self.lesion = nn.Conv3d(1, 1, 1)
        self.pool = nn.AdaptiveAvgPool3d((2, 2, 1))
        self.proj = nn.Linear(d_model, d_model)

    def _trunk(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = batch["volume"]
        feats = self.pool(torch.relu(self.conv(x))).flatten(2).transpose(1, 2)  # [B, 4, D]
        return {"feats": feats, "extra.lesion_logits": self.lesion(x), "present": batch["present"]}

    def trunk(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return self._trunk(batch)

    def head(self, trunk: dict[str, torch.Tensor]) -> EncoderOutput:
        tokens = trunk["feats"] + self.proj(trunk["feats"])
        pad = ~trunk["present"].bool()[:, None].expand(-1, tokens.shape[1])
        return EncoderOutput(tokens, pad, {"lesion_logits": trunk["extra.lesion_logits"]})

    def forward(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        return self.head(self._trunk(batch))


class ToyImaging(ModalityPlugin):
    """Reads ``{"volume": array[X,Y,Z]}``; provides an affine in meta."""

    name: ClassVar[str] = "toy-imaging"
    version: ClassVar[str] = "1.2.0"
    modality: ClassVar[str] = "imaging"

    def load(self, ref: Any, spec: TaskSpec) -> ModalityInput:
        if not isinstance(ref, dict) or "volume" not in ref:
            raise InputError("imaging.invalid", "expected {'volume': array}")
        vol = np.asarray(ref["volume"], dtype=np.float32)
        if vol.shape != spec.imaging.size:
            raise InputError("imaging.bad_shape", f"{vol.shape}")
        return ModalityInput(
            "imaging",
            {"volume": torch.from_numpy(vol)[None]},
            {"volume": sha256_bytes(vol.tobytes())},
            meta={"affine": AFFINE.tolist()},
        )

    def collate(self, items: Sequence[ModalityInput | None], spec: TaskSpec) -> dict[str, torch.Tensor]:
        vols = [it.data["volume"] if it is not None else torch.zeros(1, *spec.imaging.size) for it in items]
        return {"volume": torch.stack(vols), "present": torch.tensor([it is not None for it in items])}

    def build_encoder(self, d_model: int, spec: TaskSpec) -> nn.Module:
        return ToyImagingEncoder(d_model)


class ToyTabularEncoder(nn.Module):
    """One token per feature: value × learned vector + feature embedding; a frozen 'backbone' buffer user."""

    def __init__(self, d_model: int, n: int) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.randn(n, d_model) * 0.5)
        self.feature = nn.Parameter(torch.randn(n, d_model) * 0.5)
        self.frozen = nn.Linear(1, 1)  # stands in for a frozen third-party model: must not be saved
        self.frozen.requires_grad_(False)
        self.register_buffer("mean", torch.zeros(n))

    def forward(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        x = batch["x"] - self.mean  # type: ignore[operator]
        tokens = x[..., None] * self.value + self.feature
        pad = ~batch["present"].bool()[:, None].expand(-1, tokens.shape[1])
        return EncoderOutput(tokens, pad)


class ToyTabular(ModalityPlugin):
    """Reads ``{"a": float, "b": float}``."""

    name: ClassVar[str] = "toy-tabular"
    version: ClassVar[str] = "0.4.1"
    modality: ClassVar[str] = "tabular"

    def load(self, ref: Any, spec: TaskSpec) -> ModalityInput:
        try:
            vals = [float(ref[f.name]) for f in spec.tabular_schema]
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError("tabular.invalid", str(exc)) from exc
        return ModalityInput("tabular", {"x": torch.tensor(vals)}, {"row": sha256_bytes(repr(vals).encode())})

    def collate(self, items: Sequence[ModalityInput | None], spec: TaskSpec) -> dict[str, torch.Tensor]:
        n = len(spec.tabular_schema)
        xs = [it.data["x"] if it is not None else torch.zeros(n) for it in items]
        return {"x": torch.stack(xs), "present": torch.tensor([it is not None for it in items])}

    def build_encoder(self, d_model: int, spec: TaskSpec) -> nn.Module:
        return ToyTabularEncoder(d_model, len(spec.tabular_schema))


TOY_SPEC = TaskSpec(
    name="toy-task",
    required_modalities=(),
    optional_modalities=("imaging", "tabular"),
    labels=("tumor_present", "malignant"),
    imaging=ImagingSpec(spacing_mm=SPACING, size=GRID),
    tabular_schema=(FeatureSpec("a", "numeric", unit="u"), FeatureSpec("b", "numeric", unit="u")),
    heads=(
        HeadSpec("tumor_present", "tumor_present", "presence", fallback_label="malignant"),
        HeadSpec("malignant", "malignant", "risk"),
    ),
)


class ToyTask(TaskPlugin):
    """The toy task; ``spec_override`` lets a test change the schema."""

    name: ClassVar[str] = "toy-task"
    version: ClassVar[str] = "0.1.0"
    spec_override: TaskSpec | None = None
    weights: Path | None = None

    def spec(self) -> TaskSpec:
        return self.spec_override or TOY_SPEC

    def weights_path(self) -> Path | None:
        return self.weights

    def model_card_path(self) -> Path | None:
        return None


def toy_registry(imaging_version: str = "1.2.0", spec: TaskSpec | None = None, weights: Path | None = None) -> Registry:
    """A registry holding the toy plugins (no entry points involved)."""
    img_cls = type("ToyImagingV", (ToyImaging,), {"version": imaging_version})
    task = ToyTask()
    task.spec_override = spec
    task.weights = weights
    plugins: list[Any] = [img_cls(), ToyTabular(), task]
    return Registry([PluginRecord(p.name, "toy", p.kind, p.name, p.version, "ok", plugin=p) for p in plugins])


def changed_schema() -> TaskSpec:
    """The toy spec with a renamed feature."""
    return replace(TOY_SPEC, tabular_schema=(FeatureSpec("a", "numeric", unit="u"), FeatureSpec("c", "numeric")))


def toy_cohort(n: int = 60, seed: int = 0, per_patient: int = 2) -> Any:
    """Labelled toy cases: a bright blob (lesion) raises malignancy together with feature ``a``."""
    from mmclinic.case import Case
    from mmclinic.training.data import Cohort
    from mmclinic.training.metrics import GtLesion

    rng = np.random.default_rng(seed)
    cases, lesions = [], {}
    for i in range(n):
        vol = rng.normal(0, 0.05, GRID).astype(np.float32)
        has = bool(rng.random() < 0.5)
        gts = []
        if has:
            ijk = (int(rng.integers(1, GRID[0] - 1)), int(rng.integers(1, GRID[1] - 1)), int(rng.integers(0, GRID[2])))
            vol[ijk] = 1.0
            gts.append(GtLesion(tuple(float(v) for v in (AFFINE @ np.array([*ijk, 1.0]))[:3]), 7.0))  # type: ignore[arg-type]
        a = float(rng.normal())
        malignant = float(rng.random() < 1 / (1 + np.exp(-(3 * a + 2 * has - 1.5))))
        inputs: dict[str, Any] = {"imaging": {"volume": vol}, "tabular": {"a": a, "b": float(rng.normal())}}
        if i % 7 == 3:
            del inputs["tabular"]  # some cases lack records
        cid = f"T{i:03d}"
        cases.append(
            Case(
                cid,
                f"P{i // per_patient:03d}",
                inputs=inputs,
                labels={"tumor_present": float(has), "malignant": malignant},
            )
        )
        lesions[cid] = gts
    return Cohort(cases, {}, lesions, {"cases": {c.case_id: {"p_malignant": 0.5, "lesions": []} for c in cases}})
