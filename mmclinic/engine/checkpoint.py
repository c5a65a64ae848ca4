"""Checkpoint files: weights of the trainable parts + metadata, saved and validated against installed plugins."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mmclinic import __version__
from mmclinic.case import sha256_file, stable_hash
from mmclinic.errors import MmclinicError, ModelError
from mmclinic.logs import event
from mmclinic.model.fusion import HEADS
from mmclinic.plugin_api import ModalityPlugin, TaskSpec

log = logging.getLogger(__name__)

FORMAT = "mmclinic-checkpoint/1"
CHECKPOINT_NAME = "model.pt"  # the final, calibrated checkpoint inside a training-run folder


def spec_to_dict(spec: TaskSpec) -> dict[str, Any]:
    """JSON-normalised TaskSpec (tuples become lists) so saved and live specs compare equal."""
    return json.loads(json.dumps(asdict(spec)))  # type: ignore[no-any-return]


def frozen_keys(model: nn.Module) -> set[str]:
    """State-dict keys that belong to frozen sub-modules (e.g. a frozen text transformer).

    They are not stored: the plugin rebuilds them from its installed package, which keeps the
    bundled checkpoint small and avoids a second copy of a third-party model. A key is frozen when
    it is a parameter with ``requires_grad=False``, or a buffer of a module whose parameters (own and
    descendants') are all frozen; buffers of trainable modules (e.g. normalisation stats, the
    temperature) are kept.
    """
    keys: set[str] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            keys.add(name)
    for mod_name, mod in model.named_modules():
        params = list(mod.parameters())
        if params and not any(p.requires_grad for p in params):
            for b_name, _ in mod.named_buffers():
                keys.add(f"{mod_name}.{b_name}" if mod_name else b_name)
    return keys


def trainable_state_dict(model: nn.Module) -> dict[str, Any]:
    """State dict without frozen keys, detached on CPU."""
    skip = frozen_keys(model)
    out: dict[str, Any] = {}
    for k, v in model.state_dict().items():
        if k in skip:
            continue
        # Extra state (e.g. a backbone hash an encoder checks on load) is plain data, kept as is.
        out[k] = v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v
    return out


def load_trainable(module: nn.Module, state: dict[str, Any]) -> None:
    """Load a state dict saved by ``trainable_state_dict``; only frozen keys may be missing.

    ModelError ``model.state_mismatch`` when shapes differ (e.g. a plugin's encoder changed since
    training), a key is unexpected, or a trainable key is missing.
    """
    try:
        missing, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1:2] or [str(exc)]
        raise ModelError(
            "model.state_mismatch", f"weights do not fit the installed plugins: {first[0].strip()}"
        ) from exc
    if unexpected:
        raise ModelError("model.state_mismatch", f"unexpected weights: {', '.join(sorted(unexpected)[:5])}")
    not_frozen = sorted(set(missing) - frozen_keys(module))
    if not_frozen:
        raise ModelError("model.state_mismatch", f"missing weights: {', '.join(not_frozen[:5])}")


def plugin_versions_compatible(saved: str, installed: str) -> bool:
    """Same major.minor: a patch release must not change preprocessing or encoder layout."""
    return saved.split(".")[:2] == installed.split(".")[:2]


def preprocessing_hash(spec: TaskSpec, plugins: dict[str, ModalityPlugin]) -> str:
    """Hash of everything that shapes model inputs: task spec, plugin names/versions/configs."""
    return stable_hash(
        {
            # Heads are outputs, not inputs: a checkpoint saved before tasks declared them keeps its hash.
            "spec": {k: v for k, v in spec_to_dict(spec).items() if k != "heads"},
            "plugins": {
                m: {"name": p.name, "version": p.version, "config": p.config.model_dump(mode="json")}
                for m, p in sorted(plugins.items())
            },
        }
    )


def build_meta(
    *,
    task_name: str,
    task_version: str,
    plugins: dict[str, ModalityPlugin],
    spec: TaskSpec,
    fusion: dict[str, Any],
    detection: dict[str, Any],
    normalization: dict[str, Any],
    temperature: list[float],
    training: dict[str, Any],
    metrics: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Checkpoint metadata (plain JSON types only, so it loads with ``weights_only=True``)."""
    meta = {
        "format": FORMAT,
        "task": {"name": task_name, "version": task_version},
        "plugins": {m: {"name": p.name, "version": p.version} for m, p in sorted(plugins.items())},
        "spec": spec_to_dict(spec),
        "preprocessing_hash": preprocessing_hash(spec, plugins),
        "fusion": fusion,
        "detection": detection,
        "normalization": normalization,
        "temperature": [float(t) for t in temperature],
        "training": training,
        "metrics": metrics or {},
        "mmclinic_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return json.loads(json.dumps(meta))  # type: ignore[no-any-return]


def state_sha256(state: dict[str, Any]) -> str:
    """SHA-256 over the weights (sorted keys, dtype, shape, bytes): the checkpoint's own integrity check."""
    h = hashlib.sha256()
    for k in sorted(state):
        v = state[k]
        h.update(k.encode())
        if isinstance(v, torch.Tensor):
            t = v.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(json.dumps(v, sort_keys=True, default=str).encode())
    return h.hexdigest()


def save_checkpoint(path: Path, model: nn.Module, meta: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
    """Write atomically (temp file + rename) and return the file's SHA-256.

    ``meta["weights_sha256"]`` is the hash of the weights themselves (a file cannot contain its own
    hash); provenance and the model card use the file's SHA-256, which covers weights and metadata.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    state = trainable_state_dict(model)
    payload: dict[str, Any] = {"meta": {**meta, "weights_sha256": state_sha256(state)}, "state_dict": state}
    if extra:
        payload.update(extra)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return sha256_file(path)


def read_checkpoint(path: Path, *, with_extra: bool = False) -> dict[str, Any]:
    """Load a checkpoint file safely (``weights_only``); ModelError when it is not one of ours."""
    if not path.is_file():
        raise ModelError("model.not_found", f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling / zip error means a corrupt or foreign file
        raise ModelError("model.corrupt", f"{path.name}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(payload, dict) or not isinstance(payload.get("meta"), dict):
        raise ModelError("model.corrupt", f"{path.name} is not an mmclinic checkpoint")
    if payload["meta"].get("format") != FORMAT:
        raise ModelError("model.bad_format", f"format {payload['meta'].get('format')!r}, expected {FORMAT!r}")
    want = payload["meta"].get("weights_sha256")
    if want is not None and state_sha256(payload["state_dict"]) != want:
        raise ModelError("model.corrupt", f"{path.name}: weights do not match their recorded SHA-256")
    if not with_extra:
        payload = {"meta": payload["meta"], "state_dict": payload["state_dict"]}
    return payload


def check_plugin(modality: str, want: dict[str, str], plugin: ModalityPlugin | None) -> None:
    """ModelError when the installed ``plugin`` cannot run a checkpoint's ``modality`` encoder (``want``)."""
    if plugin is None:
        raise ModelError("model.plugin_missing", f"checkpoint needs a {modality!r} plugin ({want['name']})")
    if plugin.name != want["name"]:
        raise ModelError(
            "model.plugin_mismatch",
            f"{modality}: checkpoint was trained with {want['name']!r}, installed is {plugin.name!r}",
        )
    if not plugin_versions_compatible(want["version"], plugin.version):
        raise ModelError(
            "model.plugin_version_mismatch",
            f"{plugin.name}: checkpoint needs {want['version']}, installed is {plugin.version}",
        )
    if want["version"] != plugin.version:
        event(log, "model.plugin_patch_differs", plugin=plugin.name, saved=want["version"], installed=plugin.version)


def check_compatible(
    meta: dict[str, Any], spec: TaskSpec, plugins: dict[str, ModalityPlugin], task_version: str
) -> None:
    """Raise ModelError with a precise reason when the installed task/plugins cannot run this checkpoint."""
    for modality, want in meta["plugins"].items():
        check_plugin(modality, want, plugins.get(modality))
    live = spec_to_dict(spec)
    saved = meta["spec"]
    for key in ("tabular_schema", "imaging", "labels", "max_text_tokens"):
        if saved.get(key) != live.get(key):
            raise ModelError("model.schema_mismatch", f"task {spec.name!r}: {key} differs from the checkpoint")
    try:
        spec.check_heads()
    except MmclinicError as exc:
        raise ModelError("model.task_heads", exc.detail) from exc
    heads = tuple(meta["fusion"].get("heads", HEADS))  # checkpoints saved before tasks declared heads
    if heads != tuple(h.name for h in spec.heads):
        declared = [h.name for h in spec.heads]
        raise ModelError("model.heads_mismatch", f"task {spec.name!r} declares heads {declared}, model {list(heads)}")
    t_saved = meta["task"]["version"]
    if not plugin_versions_compatible(t_saved, task_version):
        raise ModelError("model.task_version_mismatch", f"checkpoint task {t_saved}, installed {task_version}")
