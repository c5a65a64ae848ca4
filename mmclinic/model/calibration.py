"""Temperature scaling: one scalar per head, fitted by minimising validation NLL."""

from __future__ import annotations

import math

import torch


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200) -> float:
    """Temperature ``T > 0`` minimising BCE of ``sigmoid(logits / T)`` against ``labels`` (1-D tensors).

    Optimised in log-space so T stays positive; clamped to [0.05, 20] so a degenerate validation
    split (e.g. perfectly separated) cannot produce an absurd value.
    """
    z = logits.detach().double().flatten()
    y = labels.detach().double().flatten()
    if z.numel() == 0 or y.min() == y.max():
        return 1.0  # nothing to calibrate against
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z / log_t.exp(), y)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    t = float(log_t.detach().exp())
    if math.isnan(t):
        return 1.0
    return min(max(t, 0.05), 20.0)
