"""Post-hoc calibration on validation: Platt scaling (a temperature and a shift) per head, or the temperature alone."""

from __future__ import annotations

import math

import torch

T_RANGE = (0.05, 20.0)  # a degenerate validation split (e.g. perfectly separated) cannot give an absurd value
SHIFT_RANGE = (-5.0, 5.0)  # in logits


def fit_platt(
    logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 200, shift: bool = True
) -> tuple[float, float]:
    """``(T, s)`` minimising BCE of ``sigmoid(logits / T + s)``; ``s`` stays 0 with ``shift=False``.

    The shift corrects a risk that is too low at one end and too high in the middle, which a
    temperature alone (a slope around logit 0) cannot. T is optimised in log-space so it stays
    positive; both are clamped (``T_RANGE``, ``SHIFT_RANGE``). One class only: ``(1.0, 0.0)``.
    """
    z = logits.detach().double().flatten()
    y = labels.detach().double().flatten()
    if z.numel() == 0 or y.min() == y.max():
        return 1.0, 0.0  # nothing to calibrate against
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    s = torch.zeros((), dtype=torch.float64, requires_grad=shift)
    params = [log_t, s] if shift else [log_t]
    opt = torch.optim.LBFGS(params, lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(z / log_t.exp() + s, y)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(closure)  # type: ignore[no-untyped-call]
    t, b = float(log_t.detach().exp()), float(s.detach())
    if math.isnan(t) or math.isnan(b):
        return 1.0, 0.0
    return min(max(t, T_RANGE[0]), T_RANGE[1]), min(max(b, SHIFT_RANGE[0]), SHIFT_RANGE[1])
