"""Replaying a frozen encoder: its outputs are computed once and fed back as a batch (phase-2 training)."""

from __future__ import annotations

import torch
from torch import nn

from mmclinic.plugin_api import EncoderOutput

_EXTRA = "extra."


def outputs_as_batch(eo: EncoderOutput, present: torch.Tensor) -> dict[str, torch.Tensor]:
    """Encoder outputs as batch tensors (``valid`` rather than ``pad_mask`` so zero-padding means padding)."""
    out = {"tokens": eo.tokens.detach(), "valid": ~eo.pad_mask.detach().bool(), "present": present}
    out.update({_EXTRA + k: v.detach() for k, v in eo.extras.items()})
    return out


class ReplayEncoder(nn.Module):
    """Stands in for a frozen encoder during training: returns the stored outputs unchanged."""

    def forward(self, batch: dict[str, torch.Tensor]) -> EncoderOutput:
        extras = {k[len(_EXTRA) :]: v for k, v in batch.items() if k.startswith(_EXTRA)}
        return EncoderOutput(batch["tokens"], ~batch["valid"].bool(), extras)
