"""Join per-case (batch size 1) modality batches into one batch, and move batches between devices."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mmclinic.model.fusion import Batch


def _pad_to(t: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    if tuple(t.shape[1:]) == tuple(shape):
        return t
    pad: list[int] = []
    for have, want in reversed(list(zip(t.shape[1:], shape, strict=True))):
        pad.extend([0, want - have])
    # Zero / False is the padding value: it is what attention masks (1 = keep) and "present"
    # flags expect; a plugin whose precompute output varies in length must follow this convention.
    return torch.nn.functional.pad(t, pad, value=0)


def concat_cases(items: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate per-case batches of one modality along dim 0, zero-padding variable dims."""
    if not items:
        raise ValueError("no items to concatenate")
    keys = list(items[0])
    out: dict[str, torch.Tensor] = {}
    for k in keys:
        ts = [it[k] for it in items]
        if any(t.dim() != ts[0].dim() for t in ts):
            raise ValueError(f"batch key {k!r} has inconsistent ranks")
        if ts[0].dim() == 0:
            out[k] = torch.stack(ts)
            continue
        shape = [max(t.shape[d] for t in ts) for d in range(1, ts[0].dim())]
        out[k] = torch.cat([_pad_to(t, shape) for t in ts], dim=0)
    return out


def concat_batches(cases: Sequence[Batch]) -> Batch:
    """Per-case multi-modality batches (each ``{modality: {key: tensor[1, ...]}}``) → one batch."""
    modalities = list(cases[0])
    return {m: concat_cases([c[m] for c in cases]) for m in modalities}


def to_device(batch: Batch, device: torch.device) -> Batch:
    """Move every tensor of a batch (non-blocking where possible)."""
    return {m: {k: v.to(device, non_blocking=True) for k, v in b.items()} for m, b in batch.items()}


def detach_cpu(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (for caching per case)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in batch.items()}
