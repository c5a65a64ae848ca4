"""Build a fresh model for a task from installed plugins, and the metadata its checkpoint carries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from mmclinic.engine.checkpoint import build_meta
from mmclinic.engine.engine import build_model, resolve_plugins
from mmclinic.errors import ConfigError, PluginError
from mmclinic.model.detection import DetectionConfig
from mmclinic.model.fusion import FusionConfig, FusionModel
from mmclinic.plugin_api import ModalityPlugin, TaskPlugin, TaskSpec
from mmclinic.registry import Registry


@dataclass
class ModelParts:
    """A task, its spec and the modality plugins a model uses."""

    task: TaskPlugin
    spec: TaskSpec
    plugins: dict[str, ModalityPlugin]


def task_parts(registry: Registry, task_name: str, modalities: Sequence[str] | None = None) -> ModelParts:
    """Resolve the task and its modality plugins; ``modalities`` restricts to a subset (single-modality models)."""
    try:
        task = registry.get("task", task_name)
    except PluginError as exc:
        raise ConfigError("config.unknown_task", f"no task plugin {task_name!r}: {exc.detail}") from exc
    assert isinstance(task, TaskPlugin)
    spec = task.spec()
    allowed = (*spec.required_modalities, *spec.optional_modalities)
    chosen = tuple(modalities) if modalities else allowed
    bad = [m for m in chosen if m not in allowed]
    if bad or not chosen:
        raise ConfigError("config.bad_modalities", f"task {task_name!r} accepts {list(allowed)}, got {list(chosen)}")
    return ModelParts(task, spec, resolve_plugins(registry, chosen))


def new_model(parts: ModelParts, **fusion: Any) -> FusionModel:
    """A freshly initialised FusionModel over ``parts.plugins``' modalities (order = task's order)."""
    parts.spec.check_heads()
    cfg = FusionConfig(modalities=tuple(parts.plugins), heads=tuple(h.name for h in parts.spec.heads), **fusion)
    return build_model(cfg.to_dict(), parts.spec, parts.plugins)


def model_meta(
    parts: ModelParts,
    model: FusionModel,
    *,
    detection: DetectionConfig | None = None,
    normalization: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Checkpoint metadata for ``model`` (its temperature buffer included)."""
    temp: torch.Tensor = model.temperature  # type: ignore[assignment]
    return build_meta(
        task_name=parts.task.name,
        task_version=parts.task.version,
        plugins=parts.plugins,
        spec=parts.spec,
        fusion=model.cfg.to_dict(),
        detection=asdict(detection or DetectionConfig()),
        normalization=normalization or {},
        temperature=[float(t) for t in temp.tolist()],
        training=training or {},
        metrics=metrics,
    )
