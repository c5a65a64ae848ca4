"""The plugin contract: what a modality or task plugin must provide (core side; imports no plugin).

A plugin is a class (subclass of ``ModalityPlugin`` or ``TaskPlugin``) published through the
entry-point group ``mmclinic.plugins``. The registry instantiates it with its validated config.
torch is imported lazily so the store and API layers can use this module without it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from mmclinic.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from mmclinic.case import Prediction

ENTRY_POINT_GROUP = "mmclinic.plugins"


class EmptyConfig(BaseModel):
    """Config schema of a plugin that takes no options."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class FeatureSpec:
    """One tabular feature as the task defines it."""

    name: str
    type: Literal["numeric", "categorical", "boolean"]
    unit: str | None = None
    min: float | None = None
    max: float | None = None
    required: bool = False
    categories: tuple[str, ...] = ()
    description: str = ""
    # "log": the encoder sees log(value) (right-skewed lab values whose effect is multiplicative).
    scale: Literal["linear", "log"] = "linear"


@dataclass(frozen=True)
class ImagingSpec:
    """How the task wants the CT: target spacing (mm, RAS order x,y,z), size in voxels, HU window."""

    spacing_mm: tuple[float, float, float] = (5.0, 5.0, 5.0)
    size: tuple[int, int, int] = (64, 64, 32)
    hu_window: tuple[float, float] = (-1000.0, 400.0)


# What the core reads a head as: "presence" → Prediction.tumor_probability, "risk" →
# Prediction.malignancy_risk (and each finding's risk). A task that fuses must declare one of each.
HEAD_ROLES = ("presence", "risk")


@dataclass(frozen=True)
class HeadSpec:
    """One case-level output of a task: a binary head trained on the case label ``label``.

    ``fallback_label``: the label whose value is used when a case lacks ``label`` (tumor-risk: a
    case labelled only ``malignant`` trains ``tumor_present`` on that value).
    """

    name: str
    label: str
    role: str
    fallback_label: str | None = None


@dataclass(frozen=True)
class TaskSpec:
    """What a task needs from the modality plugins and what it predicts."""

    name: str
    required_modalities: tuple[str, ...]
    optional_modalities: tuple[str, ...]
    labels: tuple[str, ...]
    imaging: ImagingSpec = field(default_factory=ImagingSpec)
    tabular_schema: tuple[FeatureSpec, ...] = ()
    max_text_tokens: int = 8  # K: attention-pooled text tokens per case
    heads: tuple[HeadSpec, ...] = ()  # case-level outputs, in the model's logit order (see HEAD_ROLES)

    def head_index(self, role: str) -> int:
        """Position of the head with ``role`` among ``heads``; ConfigError when there is not exactly one."""
        found = [i for i, h in enumerate(self.heads) if h.role == role]
        if len(found) != 1:
            raise ConfigError("task.bad_heads", f"task {self.name!r} declares {len(found)} {role!r} heads, needs one")
        return found[0]

    def head(self, role: str) -> HeadSpec:
        """The head with ``role`` (its label is the manifest column it is evaluated on)."""
        return self.heads[self.head_index(role)]

    def check_heads(self) -> None:
        """ConfigError unless the heads can drive a fusion model: one per role, unique names, declared labels."""
        for role in HEAD_ROLES:
            self.head_index(role)
        names = [h.name for h in self.heads]
        if len(set(names)) != len(names) or any(h.role not in HEAD_ROLES for h in self.heads):
            raise ConfigError("task.bad_heads", f"task {self.name!r}: head names must be unique, roles {HEAD_ROLES}")
        for h in self.heads:
            if h.label not in self.labels or (h.fallback_label is not None and h.fallback_label not in self.labels):
                raise ConfigError("task.bad_heads", f"task {self.name!r}: head {h.name!r} names an undeclared label")


@dataclass
class ModalityInput:
    """One case's input after a modality plugin loaded and validated it.

    ``data`` holds per-case arrays/tensors that ``collate`` batches. ``fingerprint`` maps a
    stable key to a SHA-256 (provenance). ``summary`` is what ``mmclinic inspect`` prints.
    ``meta`` carries non-tensor facts later stages need (e.g. the imaging affine).
    """

    modality: str
    data: dict[str, Any]
    fingerprint: dict[str, str]
    summary: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class EncoderOutput:
    """Tokens ``[B, N, D]``, ``pad_mask`` ``[B, N]`` (True = padding / absent), extras (e.g. lesion map)."""

    tokens: torch.Tensor
    pad_mask: torch.Tensor
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class PluginBase(ABC):
    """Common part of every plugin: identity and a validated config."""

    kind: ClassVar[str]
    name: ClassVar[str]
    version: ClassVar[str]
    Config: ClassVar[type[BaseModel]] = EmptyConfig
    required_methods: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: BaseModel | None = None) -> None:
        self.config = config if config is not None else self.Config()


class ModalityPlugin(PluginBase):
    """Knows one input kind: load + validate, fingerprint, collate, encode.

    ``modality`` is the key it reads from ``Case.inputs``.
    """

    kind: ClassVar[str] = "modality"
    modality: ClassVar[str]
    required_methods: ClassVar[tuple[str, ...]] = ("load", "collate", "build_encoder")

    @abstractmethod
    def load(self, ref: Any, spec: TaskSpec) -> ModalityInput:
        """Load and validate one case's input; raise ``InputError(reason, detail)`` on bad input."""

    @abstractmethod
    def collate(self, items: Sequence[ModalityInput | None], spec: TaskSpec) -> dict[str, torch.Tensor]:
        """Batch per-case inputs; ``None`` is an absent modality. Must include ``present`` (bool [B])."""

    @abstractmethod
    def build_encoder(self, d_model: int, spec: TaskSpec) -> nn.Module:
        """An ``nn.Module`` whose ``forward(batch) -> EncoderOutput``.

        It may define ``precompute(batch) -> batch``: the frozen, deterministic part of the
        encoder (e.g. a frozen transformer) whose output the trainer may cache per case;
        ``forward`` must accept the precomputed batch. Without it the trainer assumes identity.

        An encoder whose extras carry a lesion map may define ``isolate(batch, suppress) ->
        EncoderOutput``: for a batch of one case and bool ``suppress`` ``[F, 1, *grid]``, the case's
        outputs ``F`` times, row ``f`` as if the voxels ``suppress[f]`` held no lesion. The engine uses
        it to give each finding the risk of the case with that finding alone.

        It may also define ``add_detector(logit_shift) -> nn.Module`` and ``detect(image) -> logits``: a
        network of its own for the findings' map, which its extras then carry as ``detection_logits``
        (``mmclinic train-detector`` trains it; the lesion map the tokens read is left as it was).
        """


class TaskPlugin(PluginBase):
    """A diagnosis task: spec (modalities, schema, labels), weights, model card, SR mapping."""

    kind: ClassVar[str] = "task"
    required_methods: ClassVar[tuple[str, ...]] = ("spec", "weights_path", "model_card_path")

    @abstractmethod
    def spec(self) -> TaskSpec:
        """The task's modality requirements, tabular schema and imaging geometry."""

    @abstractmethod
    def weights_path(self) -> Path | None:
        """Bundled checkpoint file, or ``None`` when the task ships no weights."""

    @abstractmethod
    def model_card_path(self) -> Path | None:
        """Bundled model card (Markdown)."""

    def sr_content(self, prediction: Prediction) -> dict[str, Any]:
        """Codes and values for the DICOM SR (overridden by tasks that export SR)."""
        return {}


PLUGIN_KINDS: dict[str, type[PluginBase]] = {"modality": ModalityPlugin, "task": TaskPlugin}
