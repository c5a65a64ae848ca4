"""The task plugin declares the heads: the model is built with them, the engine reads each by its role."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_engine import _case, make_checkpoint
from toy_plugins import TOY_SPEC, toy_cohort, toy_registry

from mmclinic.engine import InferenceEngine
from mmclinic.engine.checkpoint import read_checkpoint
from mmclinic.engine.factory import task_parts
from mmclinic.errors import ConfigError, ModelError
from mmclinic.plugin_api import HeadSpec
from mmclinic.training.examples import _labels

PRESENCE = HeadSpec("lesion", label="tumor_present", role="presence", fallback_label="malignant")
RISK = HeadSpec("cancer", label="malignant", role="risk")
RISK_FIRST = replace(TOY_SPEC, heads=(RISK, PRESENCE))


@pytest.mark.parametrize(
    "heads",
    [
        (),  # none declared
        (RISK,),  # no presence head
        (RISK, replace(RISK, name="other")),  # two risk heads
        (PRESENCE, replace(RISK, name="lesion")),  # names not unique
        (PRESENCE, replace(RISK, label="grade")),  # a label the task does not declare
        (PRESENCE, RISK, HeadSpec("x", "malignant", "severity")),  # a role the core does not know
    ],
)
def test_heads_that_cannot_drive_a_model_are_a_config_error(heads: tuple[HeadSpec, ...]) -> None:
    with pytest.raises(ConfigError) as exc:
        replace(TOY_SPEC, heads=heads).check_heads()
    assert exc.value.reason == "task.bad_heads"


def test_model_is_built_with_the_declared_heads_and_read_by_role(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "m.pt", toy_registry(spec=RISK_FIRST))
    assert read_checkpoint(path)["meta"]["fusion"]["heads"] == ["cancer", "lesion"]
    engine = InferenceEngine.load(path, device="cpu", registry=toy_registry(spec=RISK_FIRST))
    assert (engine.risk_head, engine.presence_head) == (0, 1)
    engine.model.logit_offset.copy_(torch.tensor([4.0, -4.0]))  # type: ignore[operator]  # tell the heads apart
    (pred,) = engine.predict([_case(1)])
    assert pred.malignancy_risk > 0.9 and pred.tumor_probability < 0.1


def test_checkpoint_heads_must_match_the_task(tmp_path: Path) -> None:
    path = make_checkpoint(tmp_path / "m.pt", toy_registry())  # toy order: presence, then risk
    for spec, reason in ((RISK_FIRST, "model.heads_mismatch"), (replace(TOY_SPEC, heads=()), "model.task_heads")):
        with pytest.raises(ModelError) as exc:
            InferenceEngine.load(path, device="cpu", registry=toy_registry(spec=spec))
        assert exc.value.reason == reason


def test_training_targets_follow_the_heads_and_their_fallback() -> None:
    case = toy_cohort(n=1).cases[0]
    parts = task_parts(toy_registry(spec=RISK_FIRST), "toy-task", None)
    y = _labels(case, parts.spec)
    assert y is not None
    assert y.tolist() == [case.labels["malignant"], case.labels["tumor_present"]]
    only_malignant = replace(case, labels={"malignant": 1.0})
    assert _labels(only_malignant, parts.spec).tolist() == [1.0, 1.0]  # type: ignore[union-attr]
    assert _labels(replace(case, labels={"tumor_present": 1.0}), parts.spec) is None  # risk has no fallback
    assert np.isfinite(y.numpy()).all()
