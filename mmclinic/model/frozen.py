"""Replaying a frozen encoder: its outputs are computed once and fed back as a batch (phase-2 training)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mmclinic.plugin_api import EncoderOutput

_EXTRA = "extra."


def outputs_as_batch(eo: EncoderOutput, present: torch.Tensor) -> dict[str, torch.Tensor]:
    """Encoder outputs as batch tensors (``valid`` rather than ``pad_mask`` so zero-padding means padding)."""
    out = {"tokens": eo.tokens.detach(), "valid": ~eo.pad_mask.detach().bool(), "present": present}
    out.update({_EXTRA + k: v.detach() for k, v in eo.extras.items()})
    return out


def has_trunk(encoder: nn.Module) -> bool:
    """Whether an encoder splits into a freezable ``trunk(batch) -> dict`` and a trainable ``head(dict)``."""
    return callable(getattr(encoder, "trunk", None)) and callable(getattr(encoder, "head", None))


def frozen_outputs(encoder: nn.Module, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """What to cache for a frozen encoder: its trunk's outputs when it has one, else its full outputs."""
    if has_trunk(encoder):
        return {k: v.detach() for k, v in encoder.trunk(batch).items()}  # type: ignore[operator]
    return outputs_as_batch(encoder(batch), batch["present"])


class ReplayEncoder(nn.Module):
    """Stands in for a frozen encoder during training: returns the stored outputs unchanged."""

    def forward(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        extras = {k[len(_EXTRA) :]: v for k, v in batch.items() if k.startswith(_EXTRA)}
        return EncoderOutput(batch["tokens"], ~batch["valid"].bool(), extras)


class HeadReplay(nn.Module):
    """Stands in for a frozen trunk: stored trunk outputs go through the real encoder's (trainable) head."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        return self.encoder.head(batch)  # type: ignore[operator, no-any-return]


def replay_for(encoder: nn.Module) -> nn.Module:
    """The module that replays what ``frozen_outputs`` cached for ``encoder``."""
    return HeadReplay(encoder) if has_trunk(encoder) else ReplayEncoder()
