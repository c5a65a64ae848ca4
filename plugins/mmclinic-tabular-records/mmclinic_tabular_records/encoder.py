"""FT-Transformer-style feature tokenizer: one token per schema feature, learned "missing" embedding per feature.

Batch (from ``collate``): ``num`` float [B, F] raw numeric values, ``cat`` long [B, F] category index
(booleans: 0 false, 1 true), ``missing`` bool [B, F], ``present`` bool [B].
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mmclinic.errors import ModelError
from mmclinic.plugin_api import EncoderOutput, FeatureSpec

# Smallest value a log-scale feature is taken to have (units of the feature).
LOG_FLOOR = 1e-3


def n_categories(spec: FeatureSpec) -> int:
    """Embedding rows a feature needs (0 for numeric)."""
    if spec.type == "boolean":
        return 2
    if spec.type == "categorical":
        return len(spec.categories)
    return 0


class TabularEncoder(nn.Module):
    """Tokens ``[B, F, d_model]``: numeric ``x_norm * W_f + b_f``; categorical embedding; missing embedding; + id."""

    # Buffers, declared for the type checker (nn.Module.__getattr__ would otherwise type them as Tensor | Module).
    is_numeric: torch.Tensor
    is_log: torch.Tensor
    cat_offset: torch.Tensor
    norm_mean: torch.Tensor
    norm_std: torch.Tensor
    norm_fitted: torch.Tensor

    def __init__(self, schema: Sequence[FeatureSpec], d_model: int, clip: float = 10.0) -> None:
        super().__init__()
        if not schema:
            raise ModelError("model.empty_schema", "the task defines no tabular features")
        self.feature_names = tuple(f.name for f in schema)
        self.clip = clip
        n = len(schema)
        self.register_buffer("is_numeric", torch.tensor([f.type == "numeric" for f in schema]), persistent=False)
        is_log = [f.type == "numeric" and f.scale == "log" for f in schema]
        self.register_buffer("is_log", torch.tensor(is_log), persistent=False)
        # Row 0 of the shared table is a dummy that numeric features index (their lookup is discarded).
        offsets, total = [], 1
        for f in schema:
            offsets.append(total if n_categories(f) else 0)
            total += n_categories(f)
        self.register_buffer("cat_offset", torch.tensor(offsets, dtype=torch.long), persistent=False)
        bound = 1.0 / math.sqrt(d_model)  # FT-Transformer's uniform init
        self.num_weight = nn.Parameter(torch.empty(n, d_model).uniform_(-bound, bound))
        self.num_bias = nn.Parameter(torch.empty(n, d_model).uniform_(-bound, bound))
        self.cat_embedding = nn.Embedding(total, d_model)
        nn.init.uniform_(self.cat_embedding.weight, -bound, bound)
        self.missing_embedding = nn.Parameter(torch.empty(n, d_model).uniform_(-bound, bound))
        self.feature_embedding = nn.Parameter(torch.empty(n, d_model).uniform_(-bound, bound))
        # Normalisation statistics are buffers so checkpoints carry them. Until fitted, a feature with a
        # declared range uses its centre and a quarter of its width, which keeps x_norm near [-2, 2].
        mean = [((f.min + f.max) / 2) if f.min is not None and f.max is not None else 0.0 for f in schema]
        std = [((f.max - f.min) / 4 or 1.0) if f.min is not None and f.max is not None else 1.0 for f in schema]
        mean = [0.0 if log else m for m, log in zip(mean, is_log, strict=True)]
        std = [1.0 if log else s for s, log in zip(std, is_log, strict=True)]
        self.register_buffer("norm_mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("norm_std", torch.tensor(std, dtype=torch.float32))
        self.register_buffer("norm_fitted", torch.tensor(False))

    @torch.no_grad()
    def fit_normalization(self, batches: Iterable[Mapping[str, torch.Tensor]]) -> dict[str, int]:
        """Fit mean/std per numeric feature on observed (present, non-missing) values; returns counts per feature.

        A feature never observed keeps its prior; a constant feature gets std 1 (no division by zero).
        """
        n = len(self.feature_names)
        count = torch.zeros(n, dtype=torch.float64)
        total = torch.zeros(n, dtype=torch.float64)
        total_sq = torch.zeros(n, dtype=torch.float64)
        for batch in batches:
            observed = (~batch["missing"].bool() & batch["present"].bool().unsqueeze(1)).cpu()
            observed &= self.is_numeric.cpu().unsqueeze(0)
            x = self.transform(batch["num"].detach().cpu().double()) * observed
            count += observed.sum(0)
            total += x.sum(0)
            total_sq += (x * x).sum(0)
        seen = count > 0
        mean = torch.where(seen, total / count.clamp(min=1), self.norm_mean.cpu().double())
        var = (total_sq / count.clamp(min=1) - mean * mean).clamp(min=0)
        std = torch.where(seen, var.sqrt(), self.norm_std.cpu().double())
        std = torch.where(std > 1e-6, std, torch.ones_like(std))
        self.norm_mean.copy_(mean.float())
        self.norm_std.copy_(std.float())
        self.norm_fitted.fill_(True)
        return {name: int(c) for name, c, num in zip(self.feature_names, count, self.is_numeric, strict=True) if num}

    def transform(self, num: torch.Tensor) -> torch.Tensor:
        """Raw numeric values → the scale the model sees (log for ``scale="log"`` features)."""
        # A floor keeps log finite for zero (a lab at its detection limit); missing values are zeros too.
        floor = torch.full_like(num, LOG_FLOOR)
        return torch.where(self.is_log.to(num.device), torch.log(torch.maximum(num, floor)), num)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> EncoderOutput:
        """One token per feature; the pad mask is True only for absent cases (missing values are tokens)."""
        num, cat = batch["num"], batch["cat"]
        missing, present = batch["missing"].bool(), batch["present"].bool()
        if num.shape[-1] != len(self.feature_names):
            raise ModelError(
                "model.schema_mismatch", f"{num.shape[-1]} features, encoder has {len(self.feature_names)}"
            )
        x_norm = ((self.transform(num) - self.norm_mean) / self.norm_std).clamp(-self.clip, self.clip)
        numeric_tok = x_norm.unsqueeze(-1) * self.num_weight + self.num_bias
        cat_index = torch.where(self.is_numeric, torch.zeros_like(cat), cat + self.cat_offset)
        cat_tok = self.cat_embedding(cat_index)
        tokens = torch.where(self.is_numeric.unsqueeze(-1), numeric_tok, cat_tok)
        tokens = torch.where(missing.unsqueeze(-1), self.missing_embedding.expand_as(tokens), tokens)
        tokens = tokens + self.feature_embedding
        pad_mask = (~present).unsqueeze(1).expand(-1, len(self.feature_names))
        tokens = tokens.masked_fill(pad_mask.unsqueeze(-1), 0.0)
        return EncoderOutput(tokens=tokens, pad_mask=pad_mask)

    def get_extra_state(self) -> dict[str, Any]:
        return {"features": list(self.feature_names)}

    def set_extra_state(self, state: Any) -> None:
        features = tuple(state.get("features", ())) if isinstance(state, dict) else ()
        if features != self.feature_names:
            raise ModelError("model.schema_mismatch", "checkpoint's tabular features differ from the task schema")
