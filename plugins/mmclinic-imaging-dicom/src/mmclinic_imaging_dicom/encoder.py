"""CT encoder: a small MONAI BasicUNet giving region tokens, a lesion token and a voxel lesion-logit map."""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from monai.networks.nets.basic_unet import BasicUNet
from torch import nn

from mmclinic.plugin_api import EncoderOutput
from mmclinic.threads import torch_threads

# The fusion model adds a learned rare-class prior (starting at -6) to the lesion logits; the soft
# lesion volume below uses the same starting value so that "mostly empty" reads as ~0 voxels.
LESION_PRIOR_LOGIT = -6.0
# Hand-made lesion statistics per case (see ``lesion_statistics``), before the learned projection.
N_LESION_STATS = 5


def lesion_statistics(logits: torch.Tensor, image: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """``[B, N_LESION_STATS + C]``: what the lesion map says about the case, as one feature vector.

    The case-level malignancy signal of a CT is in its most suspicious lesion (presence, size,
    density, margin), which average-pooled bottleneck regions dilute to nothing in a 64×64×32 grid.
    Here the lesion map decides where to look: soft attention over voxels by lesion logit pools the
    intensity (mean and spread: part-solid lesions have a low-density rim) and the decoder features;
    the top logits and the soft volume say whether there is a lesion and how large it is. The
    attention weights are detached so the malignancy loss cannot bend the segmentation map.
    """
    # Sums over ~10⁵ voxels are split across threads in an order that depends on the thread count;
    # in float64 that order no longer shows after the cast back to float32, so a Ray worker with one
    # thread and a local engine with several give bit-identical statistics.
    flat = logits.flatten(1).double()  # [B, V]
    w = torch.softmax(flat.detach(), dim=1)
    img = image.flatten(1).double()
    mean = (w * img).sum(1)
    spread = ((w * img * img).sum(1) - mean * mean).clamp_min(0.0).add(1e-6).sqrt()
    top = flat.detach().topk(min(8, flat.shape[1]), dim=1).values
    soft_volume = torch.sigmoid(flat.detach() + LESION_PRIOR_LOGIT).sum(1)
    stats = torch.stack([top[:, 0] / 10.0, top.mean(1) / 10.0, torch.log1p(soft_volume), mean, spread], dim=1)
    pooled = torch.einsum("bv,bcv->bc", w, feats.flatten(2).double())
    return torch.cat([stats, pooled], dim=1).to(logits.dtype)


def channel_mix(conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A 1×1×1 convolution (the U-Net's output layer) as a per-voxel weighted sum over channels.

    oneDNN's kernel for this layer splits the channel sum differently with the thread count, so a Ray
    worker (one thread) and a local engine (several) disagreed in the last bits of the lesion map and
    hence of the risk. Summed over a leading axis here, the order is fixed. Same weights, same result
    up to rounding.
    """
    assert isinstance(conv, nn.Conv3d) and conv.kernel_size == (1, 1, 1), conv
    w = conv.weight.flatten(1)  # [out, in]
    out = (x.unsqueeze(1) * w[None, :, :, None, None, None]).sum(2)
    return out if conv.bias is None else out + conv.bias[None, :, None, None, None]


class CtEncoder(nn.Module):
    """``forward({"image": [B,1,X,Y,Z], "present": bool[B]}) -> EncoderOutput``.

    Tokens: the bottleneck features average-pooled to ``token_grid`` regions, projected to ``d_model``,
    plus a learned embedding per region (so fusion knows where a token comes from), then one lesion
    token from ``lesion_statistics``. Extras: ``lesion_logits`` [B,1,X,Y,Z] from the U-Net decoder at
    input resolution; with a detector (``add_detector``), also ``detection_logits``, the findings' map.

    ``forward = head(trunk(batch))``: the trunk is the U-Net (the expensive, freezable part), the head
    the small projections. A trainer that freezes the encoder caches the trunk's outputs and keeps
    training the head, so the lesion token's projection still learns the malignancy signal.
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
        self.n_regions = math.prod(token_grid)
        self.n_tokens = self.n_regions + 1
        self.proj = nn.Linear(features[4], d_model)
        self.pos = nn.Parameter(torch.zeros(1, self.n_tokens, d_model))
        nn.init.trunc_normal_(self.pos, std=0.02)
        n_stats = N_LESION_STATS + features[5]
        # Statistics have different scales (logits, log-volume, intensities): normalise before the MLP.
        self.lesion_mlp = nn.Sequential(
            nn.LayerNorm(n_stats), nn.Linear(n_stats, d_model), nn.GELU(), nn.Linear(d_model, d_model)
        )
        self.norm = nn.LayerNorm(d_model)
        self.detector: nn.Module | None = None

    def add_detector(self, logit_shift: float = 0.0) -> nn.Module:
        """A second U-Net, started as a copy of this one, that gives the findings' map (``detection_logits``).

        The risk model's lesion token keeps reading the U-Net it was trained with; the detector is trained
        for detection alone afterwards (``mmclinic train-detector``), so the risk does not move. Its logits
        are absolute: ``logit_shift`` (the fusion model's lesion prior) is folded into its output bias.
        """
        if self.detector is not None:
            raise ValueError("the encoder already has a detector")
        det = copy.deepcopy(self.unet)
        conv = det.final_conv
        assert isinstance(conv, nn.Conv3d) and conv.bias is not None
        with torch.no_grad():
            conv.bias.add_(logit_shift)
        self.detector = det
        return det

    def _unet(self, x: torch.Tensor, unet: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Bottleneck features, last decoder features and lesion logits of one U-Net pass (default: ``self.unet``)."""
        u = self.unet if unet is None else unet
        # BasicUNet.forward returns only the logits; walking its stages exposes the bottleneck too.
        x0 = u.conv_0(x)
        x1 = u.down_1(x0)
        x2 = u.down_2(x1)
        # The coarse stages run on one thread. For a batch of one, oneDNN on some CPUs splits their
        # convolutions' channel sums across threads (a 16→32-channel conv on 8×8×4 voxels here), so a Ray
        # actor (one thread) and a local engine (two) disagreed by ~2e-6 in the lesion map. They hold
        # 1/64 of the voxels and little of the time.
        with torch_threads(1):
            x3 = u.down_3(x2)
            x4 = u.down_4(x3)
            d = u.upcat_4(x4, x3)
            d = u.upcat_3(d, x2)
        d = u.upcat_2(d, x1)
        d = u.upcat_1(d, x0)
        return x4, d, channel_mix(u.final_conv, d)

    def trunk(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """The U-Net pass: pooled region features, lesion statistics and the lesion-logit map."""
        x = batch["image"]
        x4, d, logits = self._unet(x)
        out = {
            "regions": self.pool(x4).flatten(2).transpose(1, 2),  # [B, N, C]
            "lesion_stats": lesion_statistics(logits, x, d),
            "extra.lesion_logits": logits,
            "present": batch["present"],
        }
        if self.detector is not None:
            out["extra.detection_logits"] = self.detect(x)
        return out

    def detect(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, 1, X, Y, Z]`` logits of the detector's findings map (the encoder must have a detector)."""
        if self.detector is None:
            raise ValueError("the encoder has no detector")
        return self._unet(image, self.detector)[2]

    def isolate(self, batch: dict[str, Any], suppress: torch.Tensor) -> EncoderOutput:
        """One case's tokens ``F`` times, row ``f`` as if the voxels ``suppress[f]`` held no lesion.

        ``batch`` holds one case; ``suppress`` is bool ``[F, 1, X, Y, Z]``. Suppressed voxels take the
        case's median lesion logit (what its background reads as) in the lesion statistics, so the lesion
        token describes the remaining lesion alone; the region tokens and the lesion map are unchanged.
        One U-Net pass serves every row.
        """
        x = batch["image"]
        if x.shape[0] != 1:
            raise ValueError(f"isolate takes one case, got a batch of {x.shape[0]}")
        x4, d, logits = self._unet(x)
        n = suppress.shape[0]
        background = logits.flatten(1).median(dim=1).values.view(1, 1, 1, 1, 1)
        masked = torch.where(suppress.to(logits.device, torch.bool), background, logits.expand(n, -1, -1, -1, -1))
        trunk = {
            "regions": self.pool(x4).flatten(2).transpose(1, 2).expand(n, -1, -1),
            "lesion_stats": lesion_statistics(masked, x.expand(n, -1, -1, -1, -1), d.expand(n, -1, -1, -1, -1)),
            "present": batch["present"].expand(n),
        }
        return self.head(trunk)

    def head(self, trunk: dict[str, torch.Tensor]) -> EncoderOutput:
        """Tokens from trunk outputs (cached or fresh); absent cases are all padding."""
        regions = self.proj(trunk["regions"])
        lesion = self.lesion_mlp(trunk["lesion_stats"]).unsqueeze(1)
        tokens = self.norm(torch.cat([regions, lesion], dim=1) + self.pos)
        present = trunk["present"].to(device=tokens.device, dtype=torch.bool)
        pad_mask = (~present)[:, None].expand(-1, self.n_tokens)
        tokens = tokens.masked_fill(pad_mask[..., None], 0.0)
        extras = {k.removeprefix("extra."): v for k, v in trunk.items() if k.startswith("extra.")}
        return EncoderOutput(tokens=tokens, pad_mask=pad_mask, extras=extras)

    def forward(self, batch: dict[str, Any]) -> EncoderOutput:
        return self.head(self.trunk(batch))
