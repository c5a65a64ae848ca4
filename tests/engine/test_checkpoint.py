"""Checkpoint files: frozen weights are not stored; mismatching plugins/schema/corrupt files → ModelError."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_engine import make_checkpoint
from toy_plugins import changed_schema, toy_registry

from mmclinic.engine import InferenceEngine
from mmclinic.engine.checkpoint import read_checkpoint, state_sha256
from mmclinic.errors import ConfigError, ModelError


def test_meta_and_frozen_weights_not_saved(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "m.pt", toy_registry())
    payload = read_checkpoint(path)
    meta, state = payload["meta"], payload["state_dict"]
    assert meta["task"] == {"name": "toy-task", "version": "0.1.0"}
    assert meta["plugins"]["imaging"] == {"name": "toy-imaging", "version": "1.2.0"}
    assert meta["fusion"]["modalities"] == ["imaging", "tabular"]
    assert meta["temperature"] == [1.5, 1.5]
    assert [f["name"] for f in meta["spec"]["tabular_schema"]] == ["a", "b"]
    assert not any(k.startswith("encoders.tabular.frozen.") for k in state)  # frozen part left out
    assert "encoders.tabular.mean" in state  # a trainable module's buffer is kept
    assert "temperature" in state


@pytest.mark.parametrize(
    ("registry_kwargs", "reason"),
    [
        ({"imaging_version": "2.0.0"}, "model.plugin_version_mismatch"),
        ({"spec": changed_schema()}, "model.schema_mismatch"),
    ],
)
def test_mismatch_is_model_error(tmp_path: Path, registry_kwargs: dict[str, object], reason: str) -> None:
    path = make_checkpoint(tmp_path / "m.pt", toy_registry())
    with pytest.raises(ModelError) as exc:
        InferenceEngine.load(path, device="cpu", registry=toy_registry(**registry_kwargs))  # type: ignore[arg-type]
    assert exc.value.reason == reason


def test_patch_version_difference_is_accepted(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "m.pt", toy_registry())
    engine = InferenceEngine.load(path, device="cpu", registry=toy_registry(imaging_version="1.2.7"))
    assert engine.plugins["imaging"].version == "1.2.7"


def test_corrupt_missing_and_foreign_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError) as e1:
        InferenceEngine.load(bad, registry=toy_registry())
    assert e1.value.reason == "model.corrupt"
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(ModelError) as e2:
        InferenceEngine.load(foreign, registry=toy_registry())
    assert e2.value.reason == "model.corrupt"
    with pytest.raises(ModelError) as e3:
        InferenceEngine.load(tmp_path / "nope.pt", registry=toy_registry())
    assert e3.value.reason == "model.not_found"
    with pytest.raises(ModelError) as e4:
        InferenceEngine.load("toy-task", registry=toy_registry())  # the toy task ships no weights
    assert e4.value.reason == "model.no_weights"


def test_task_name_loads_bundled_weights_and_run_folder(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "run" / "model.pt", toy_registry())
    by_task = InferenceEngine.load("toy-task", device="cpu", registry=toy_registry(weights=path))
    by_dir = InferenceEngine.load(tmp_path / "run", device="cpu", registry=toy_registry())
    assert by_task.weights_sha256 == by_dir.weights_sha256


def test_tampered_state_is_rejected(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "m.pt", toy_registry())
    payload = torch.load(path, weights_only=True)
    del payload["state_dict"]["head.weight"]
    payload["meta"]["weights_sha256"] = state_sha256(payload["state_dict"])  # consistent, but incomplete
    torch.save(payload, path)
    with pytest.raises(ModelError) as exc:
        InferenceEngine.load(path, registry=toy_registry())
    assert exc.value.reason == "model.state_mismatch"


def test_cuda_without_gpu_is_config_error(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: nothing to refuse")
    path = make_checkpoint(tmp_path / "m.pt", toy_registry())
    with pytest.raises(ConfigError):
        InferenceEngine.load(path, device="cuda", registry=toy_registry())


def test_weights_hash_in_metadata_detects_tampering(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "m.pt", toy_registry())
    payload = torch.load(path, weights_only=True)
    assert len(payload["meta"]["weights_sha256"]) == 64
    payload["state_dict"]["head.bias"] += 0.5  # silently changed weights
    torch.save(payload, path)
    with pytest.raises(ModelError) as exc:
        InferenceEngine.load(path, registry=toy_registry())
    assert exc.value.reason == "model.corrupt"
