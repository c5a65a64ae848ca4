"""A checkpoint whose tensor shapes no longer fit the installed plugins fails with ModelError, not a traceback."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mmclinic.engine import InferenceEngine
from mmclinic.engine.checkpoint import read_checkpoint
from mmclinic.errors import ModelError
from mmclinic.registry import get_registry


def test_shape_mismatch_is_a_model_error() -> None:
    reg = get_registry()
    task: Any = reg.get("task", "tumor-risk")
    weights = task.weights_path()
    if weights is None:
        pytest.fail("tumor-risk must ship weights")
    payload = read_checkpoint(weights)
    state = dict(payload["state_dict"])
    name = next(k for k, v in state.items() if v.ndim >= 1 and v.numel() > 1)
    state[name] = torch.zeros(state[name].shape[0] + 3, *state[name].shape[1:])
    with pytest.raises(ModelError) as exc:
        InferenceEngine.from_payload({**payload, "state_dict": state}, reg, device="cpu")
    assert exc.value.reason == "model.state_mismatch"
