"""CT encoder: a small MONAI BasicUNet giving region tokens (pooled bottleneck) and a voxel lesion-logit map."""

from __future__ import annotations

import math
from typing import Any

import torch
from monai.networks.nets.basic_unet import BasicUNet
from torch import nn

from mmclinic.plugin_api import EncoderOutput


class CtEncoder(nn.Module):
    """``forward({"image": [B,1,X,Y,Z], "present": bool[B]}) -> EncoderOutput``.

    Tokens: the bottleneck features average-pooled to ``token_grid`` regions, projected to ``d_model``,
    plus a learned embedding per region (so fusion knows where a token comes from). Extras:
    ``lesion_logits`` [B,1,X,Y,Z] from the U-Net decoder at input resolution.
    """

    def __init__(
        self,
        d_model: int,
        features: tuple[int, int, int, int, int, int] = (8, 8, 16, 32, 64, 8),
        token_grid: tuple[int, int, int] = (2, 2, 2),
    ) -> None:
        super().__init__()
        # Instance norm keeps each case independent of the others in its batch (absent cases are zeros).
        self.unet = BasicUNet(spatial_dims=3, in_channels=1, out_channels=1, features=features, norm="instance")
        self.pool = nn.AdaptiveAvgPool3d(token_grid)
        self.n_tokens = math.prod(token_grid)
        self.proj = nn.Linear(features[4], d_model)
        self.pos = nn.Parameter(torch.zeros(1, self.n_tokens, d_model))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.norm = nn.LayerNorm(d_model)

    def forward(self, batch: dict[str, Any]) -> EncoderOutput:
        x = batch["image"]
        present = batch["present"].to(device=x.device, dtype=torch.bool)
        u = self.unet
        # BasicUNet.forward returns only the logits; walking its stages exposes the bottleneck too.
        x0 = u.conv_0(x)
        x1 = u.down_1(x0)
        x2 = u.down_2(x1)
        x3 = u.down_3(x2)
        x4 = u.down_4(x3)
        d = u.upcat_4(x4, x3)
        d = u.upcat_3(d, x2)
        d = u.upcat_2(d, x1)
        d = u.upcat_1(d, x0)
        logits = u.final_conv(d)
        tokens = self.pool(x4).flatten(2).transpose(1, 2)  # [B, N, C]
        tokens = self.norm(self.proj(tokens) + self.pos)
        pad_mask = (~present)[:, None].expand(-1, self.n_tokens)
        tokens = tokens.masked_fill(pad_mask[..., None], 0.0)
        return EncoderOutput(tokens=tokens, pad_mask=pad_mask, extras={"lesion_logits": logits})
