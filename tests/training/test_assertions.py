"""Notes assertion supervision: annotations → targets, the head, its loss, and what a model without it does."""

from __future__ import annotations

import pytest
import torch
from toy_plugins import ToyTabularEncoder

from mmclinic.errors import ConfigError
from mmclinic.model.fusion import FusionConfig, FusionModel
from mmclinic.training.assertions import (
    UNSCORED,
    accuracy_by_item,
    assertion_loss,
    assertion_targets,
    attach_assertions,
)
from mmclinic.training.data import Cohort, note_assertions
from mmclinic.training.examples import Example

GT = {
    "cases": {
        "c1": {"note_findings": {"hemoptysis": "stated", "cough": "negated"}},
        "c2": {"note_findings": {"hemoptysis": "hedged", "fever": "unmentioned", "cough": "sarcastic"}},
        "c3": {"lesions": []},  # no annotation
    }
}


def test_annotations_become_item_states_with_unknowns_unscored() -> None:
    items, states, targets = note_assertions(GT)
    assert items == ("cough", "fever", "hemoptysis")
    assert states == ("unmentioned", "negated", "hedged", "stated")
    assert targets["c1"] == [1, UNSCORED, 3]  # fever not annotated for c1
    assert targets["c2"] == [UNSCORED, 0, 2]  # an unknown state is not guessed
    assert "c3" not in targets
    assert note_assertions({"cases": {"c3": {}}}) == ((), (), {})


def _notes_model(modalities: tuple[str, ...] = ("notes", "tabular")) -> FusionModel:
    torch.manual_seed(0)
    encs = {m: ToyTabularEncoder(16, 3) for m in modalities}
    return FusionModel(encs, FusionConfig(modalities, d_model=16, n_heads=2))


def _batch(notes_present: list[bool]) -> dict[str, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    b = len(notes_present)
    return {
        "notes": {"x": torch.randn(b, 3, generator=g), "present": torch.tensor(notes_present)},
        "tabular": {"x": torch.randn(b, 3, generator=g), "present": torch.ones(b, dtype=torch.bool)},
    }


def _example(cid: str) -> Example:
    return Example(cid, cid, {}, torch.zeros(2))


def test_head_is_added_from_the_cohort_and_survives_a_config_round_trip() -> None:
    model = _notes_model()
    exs = [_example(c) for c in ("c1", "c2", "c3")]
    record = attach_assertions(model, Cohort([], ground_truth=GT), exs)
    assert record == {
        "items": ["cough", "fever", "hemoptysis"],
        "states": list(note_assertions(GT)[1]),
        "annotated_cases": 2,
    }
    assert exs[2].assertions is None and exs[0].assertions is not None
    out = model(_batch([True, False, True]))
    assert out.assertion_logits is not None and out.assertion_logits.shape == (3, 3, 4)
    assert torch.isfinite(out.assertion_logits).all()  # the case without notes gives no NaN
    cfg = FusionConfig.from_dict(model.cfg.to_dict())
    assert cfg == model.cfg and cfg.has_assertion_head
    # A checkpoint written before the head existed has no such keys and builds a model without it.
    old = {k: v for k, v in model.cfg.to_dict().items() if not k.startswith("assertion")}
    assert not FusionConfig.from_dict(old).has_assertion_head
    assert _notes_model()(_batch([True])).assertion_logits is None


def test_a_model_without_notes_gets_no_head_and_notes_without_annotations_are_refused() -> None:
    tab_only = _notes_model(("tabular",))
    assert attach_assertions(tab_only, Cohort([], ground_truth=GT), []) == {}
    assert not tab_only.cfg.has_assertion_head
    with pytest.raises(ConfigError) as exc:
        attach_assertions(_notes_model(), Cohort([], ground_truth={"cases": {"c3": {}}}), [])
    assert exc.value.reason == "train.no_assertions"


def test_targets_skip_cases_without_notes_and_the_loss_only_scores_known_states() -> None:
    model = _notes_model()
    exs = [_example(c) for c in ("c1", "c2", "c3")]
    attach_assertions(model, Cohort([], ground_truth=GT), exs)
    batch = _batch([True, False, True])
    t = assertion_targets(model, exs, batch)
    assert t is not None
    assert t.tolist() == [[1, UNSCORED, 3], [UNSCORED] * 3, [UNSCORED] * 3]  # c2 has no notes, c3 no annotation
    logits = torch.zeros(3, 3, 4)
    logits[0, 0, 1] = logits[0, 2, 3] = 10.0  # right on both scored items of c1
    logits[1:, :, 0] = 50.0  # unscored rows may be anything
    loss = assertion_loss(logits, t)
    assert loss is not None and float(loss) < 1e-3
    logits[0, 2, 3] = -10.0  # now wrong on one scored item
    wrong = assertion_loss(logits, t)
    assert wrong is not None and float(wrong) > 1.0
    assert assertion_loss(logits, torch.full((3, 3), UNSCORED)) is None
    acc = accuracy_by_item(model, logits, t)
    assert acc == {"cough": 1.0, "hemoptysis": 0.0}  # fever is never scored


def test_the_head_learns_states_the_notes_tokens_carry() -> None:
    """Gradient through the head reaches the encoder: a few steps fit states that depend on the input."""
    model = _notes_model(("notes",))
    model.add_assertion_head(["a", "b"], ["no", "yes"])
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 3, generator=g)
    targets = torch.stack([(x[:, 0] > 0).long(), (x[:, 1] > 0).long()], dim=1)
    batch = {"notes": {"x": x, "present": torch.ones(64, dtype=torch.bool)}}
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    before = accuracy_by_item(model, model(batch).assertion_logits.detach(), targets)  # type: ignore[union-attr]
    for _ in range(150):
        loss = assertion_loss(model(batch).assertion_logits, targets)
        assert loss is not None
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
    after = accuracy_by_item(model, model.eval()(batch).assertion_logits.detach(), targets)  # type: ignore[union-attr]
    assert min(after.values()) > 0.9 > max(before.values())
