"""Assertion supervision of the notes: annotations → targets, the head's loss and its validation accuracy."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from mmclinic.errors import ConfigError
from mmclinic.logs import event
from mmclinic.model.fusion import Batch, FusionModel
from mmclinic.training.data import UNSCORED, Cohort, note_assertions
from mmclinic.training.examples import Example

log = logging.getLogger(__name__)

__all__ = ["UNSCORED", "accuracy_by_item", "assertion_loss", "assertion_targets", "attach_assertions"]


def attach_assertions(model: FusionModel, cohort: Cohort, examples: Sequence[Example]) -> dict[str, Any]:
    """Add the assertion head to ``model`` and each example's targets; what was attached, for the record.

    A model without the notes modality gets no head (nothing to read it from). A model with notes on a
    cohort without annotations is refused: the run asked for supervision it cannot have.
    """
    items, states, targets = note_assertions(cohort.ground_truth)
    if model.cfg.assertion_modality not in model.cfg.modalities:
        return {}
    if not items:
        raise ConfigError(
            "train.no_assertions",
            "--assertion-weight needs note_findings annotations in ground_truth.json",
        )
    model.add_assertion_head(items, states)
    n = 0
    for e in examples:
        t = targets.get(e.case_id)
        e.assertions = torch.tensor(t, dtype=torch.long) if t is not None else None
        n += t is not None
    event(log, "train.assertions", items=len(items), states=len(states), annotated=n, cases=len(examples))
    return {"items": list(items), "states": list(states), "annotated_cases": n}


def assertion_targets(model: FusionModel, exs: Sequence[Example], batch: Batch) -> torch.Tensor | None:
    """``[B, items]`` long targets, UNSCORED where a case has no annotation or no notes; None without a head."""
    if not model.cfg.has_assertion_head:
        return None
    n_items = len(model.cfg.assertion_items)
    rows = [e.assertions if e.assertions is not None else torch.full((n_items,), UNSCORED) for e in exs]
    t = torch.stack(rows)
    present = batch.get(model.cfg.assertion_modality, {}).get("present")
    if present is not None:
        t[~present.bool().cpu()] = UNSCORED
    return t


def assertion_loss(logits: torch.Tensor | None, targets: torch.Tensor | None) -> torch.Tensor | None:
    """Mean cross-entropy over scored (case, item) pairs; None when there is nothing to score."""
    if logits is None or targets is None:
        return None
    t = targets.to(logits.device)
    if not (t != UNSCORED).any():
        return None
    return nn.functional.cross_entropy(logits.float().flatten(0, 1), t.flatten(), ignore_index=UNSCORED)


def accuracy_by_item(model: FusionModel, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """Share of scored cases whose state the head reads right, per item (validation report)."""
    pred = logits.argmax(-1)
    out: dict[str, float] = {}
    for i, item in enumerate(model.cfg.assertion_items):
        scored = targets[:, i] != UNSCORED
        if scored.any():
            out[item] = float((pred[scored, i] == targets[scored, i]).float().mean())
    return out
