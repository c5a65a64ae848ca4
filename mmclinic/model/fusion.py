"""Token-level attention fusion: CLS + modality-type embeddings + pre-norm transformer + task heads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn

from mmclinic.case import NOTES
from mmclinic.plugin_api import EncoderOutput

# The case-level heads of checkpoints saved before tasks declared them (in ``ModelOutput.logits`` order).
HEADS: tuple[str, ...] = ("tumor_present", "malignant")
LESION_KEY = "lesion_logits"  # encoder extra: [B, 1, X, Y, Z] logits on the task's imaging grid
# Encoder extra of an encoder with a detector: absolute logits of the findings' map (same grid). Findings
# come from it when present, from the lesion map otherwise.
DETECTION_KEY = "detection_logits"
# Lesion voxels are ~1e-4 of a scan: starting the map at this logit (a rare-class prior, as in
# RetinaNet) saves the hundreds of optimiser steps it otherwise takes just to learn "mostly empty".
LESION_PRIOR_LOGIT = -6.0

Batch = dict[str, dict[str, torch.Tensor]]  # modality -> that plugin's collated (and precomputed) batch


def findings_logits(extras: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """The map findings are read from, in encoder extras (after ``encode``): the detector's, else the lesion map."""
    if DETECTION_KEY in extras:
        return extras[DETECTION_KEY]
    return extras.get(LESION_KEY)


@dataclass(frozen=True)
class FusionConfig:
    """Shape and regularisation of the fusion model (stored in every checkpoint)."""

    modalities: tuple[str, ...]
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    ff_mult: int = 2
    dropout: float = 0.1
    modality_dropout: float = 0.3  # per-modality probability of being hidden from the CLS during training
    # Late-fusion path: each visible modality adds its own attention-pooled linear logit to the CLS
    # logit. An additive path matches risk that is a sum of per-modality evidence, which the CLS
    # alone learned poorly (notes+tabular barely beat tabular alone); the CLS keeps the interactions.
    late_fusion: bool = False
    heads: tuple[str, ...] = HEADS  # the task's heads (TaskSpec.heads names), one logit each
    # Assertion head (a training aid, see ``FusionModel.assertion_logits``): for each item (a finding a
    # note may mention), which of ``assertion_states`` the notes assert, read from the notes tokens.
    # Empty: no head (every checkpoint before it).
    assertion_items: tuple[str, ...] = ()
    assertion_states: tuple[str, ...] = ()
    assertion_modality: str = NOTES
    # Modality whose encoder carries a detector (``add_detector``) for the findings' map; None: findings
    # come from the lesion map the risk reads (every checkpoint before it).
    detector_modality: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        for k in ("modalities", "heads", "assertion_items", "assertion_states"):
            d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FusionConfig:
        """Inverse of ``to_dict``."""
        tuples = {k: tuple(d[k]) for k in ("assertion_items", "assertion_states") if k in d}
        return cls(**{**d, "modalities": tuple(d["modalities"]), "heads": tuple(d.get("heads", HEADS)), **tuples})

    @property
    def has_assertion_head(self) -> bool:
        """True when the model reads assertion states from ``assertion_modality``'s tokens."""
        return bool(self.assertion_items) and bool(self.assertion_states) and self.assertion_modality in self.modalities


@dataclass
class ModelOutput:
    """Raw outputs: case logits ``[B, len(cfg.heads)]`` (before temperature), per-modality aux logits and extras."""

    logits: torch.Tensor
    aux_logits: dict[str, torch.Tensor] = field(default_factory=dict)
    extras: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # modality -> encoder extras
    visible: torch.Tensor | None = None  # [B, M] bool: modality seen by the CLS (after dropout/ablation)
    assertion_logits: torch.Tensor | None = None  # [B, items, states] when the model has an assertion head


class FusionModel(nn.Module):
    """Generic over modalities: whatever encoders the task's modality plugins provide.

    Each encoder maps its modality's batch to ``EncoderOutput`` tokens ``[B, N_m, d_model]``.
    Tokens of all modalities are concatenated after a CLS token; a modality-type embedding tells
    the transformer where each token came from. Absent (or dropped) modalities are removed with
    the key-padding mask, so the CLS never attends to them; the CLS itself is never masked, which
    keeps every attention row non-empty (no NaN) even when a case has a single modality.
    """

    def __init__(self, encoders: Mapping[str, nn.Module], cfg: FusionConfig) -> None:
        super().__init__()
        if set(encoders) != set(cfg.modalities):
            raise ValueError(f"encoders {sorted(encoders)} do not match modalities {list(cfg.modalities)}")
        self.cfg = cfg
        d = cfg.d_model
        self.encoders = nn.ModuleDict({m: encoders[m] for m in cfg.modalities})
        self.cls = nn.Parameter(torch.zeros(1, 1, d))
        self.type_emb = nn.Parameter(torch.zeros(len(cfg.modalities), d))
        nn.init.normal_(self.cls, std=0.02)
        nn.init.normal_(self.type_emb, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=d,
            nhead=cfg.n_heads,
            dim_feedforward=d * cfg.ff_mult,
            dropout=cfg.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        # Nested tensors would change numerics between train and eval; keep one path.
        self.fusion = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        n_out = len(cfg.heads)
        self.head = nn.Linear(d, n_out)
        # Auxiliary heads on each modality's pooled tokens give every encoder its own gradient signal,
        # so one strong modality cannot leave the others untrained (helps single-modality robustness).
        self.aux_heads = nn.ModuleDict({m: nn.Linear(d, n_out) for m in cfg.modalities})
        # Temperature per head, fitted on validation after training (1.0 = uncalibrated).
        self.register_buffer("temperature", torch.ones(n_out))
        # Logit adjustment undoing class re-weighting: training with positive weight w shifts the
        # optimal logit by +log(w), which temperature scaling alone (no bias) cannot remove.
        self.register_buffer("logit_offset", torch.zeros(n_out))
        self.lesion_bias = nn.Parameter(torch.tensor(LESION_PRIOR_LOGIT))
        if cfg.late_fusion:
            self.late_score = nn.ModuleDict({m: nn.Linear(d, 1) for m in cfg.modalities})
            late_heads = {m: nn.Linear(d, n_out) for m in cfg.modalities}
            for lin in late_heads.values():
                # Zero start: training begins from the CLS-only model and grows the additive terms.
                nn.init.zeros_(lin.weight)
                nn.init.zeros_(lin.bias)
            self.late_heads = nn.ModuleDict(late_heads)
        if cfg.has_assertion_head:
            self._build_assertion_head()
        if cfg.detector_modality is not None:
            self._attach_detector(cfg.detector_modality)

    def _attach_detector(self, modality: str, logit_shift: float = 0.0) -> nn.Module:
        if modality not in self.encoders:
            raise ValueError(f"the model has no {modality!r} encoder to attach a detector to")
        add = getattr(self.encoders[modality], "add_detector", None)
        if not callable(add):
            raise ValueError(f"the {modality!r} encoder cannot carry a detector")
        det = add(logit_shift)
        assert isinstance(det, nn.Module)
        return det

    def add_detector(self, modality: str) -> nn.Module:
        """Give ``modality``'s encoder a detector, started as a copy of its lesion-map network; returns it.

        The detector's logits start equal to the lesion map's (the learned lesion prior folded in), so an
        untrained detector finds what the model found before.
        """
        if self.cfg.detector_modality is not None:
            raise ValueError("the model already has a detector")
        det = self._attach_detector(modality, float(self.lesion_bias.detach()))
        self.cfg = replace(self.cfg, detector_modality=modality)
        return det

    def _build_assertion_head(self) -> None:
        n_items, n_states, d = len(self.cfg.assertion_items), len(self.cfg.assertion_states), self.cfg.d_model
        # One attention query per item picks the tokens about that finding; one linear map per item
        # reads its state. Training it makes the notes tokens carry every finding's assertion state,
        # which case labels alone teach slowly (see the trainer's ``assertion_weight``).
        self.assertion_query = nn.Parameter(torch.randn(n_items, d) * 0.02)
        self.assertion_weight = nn.Parameter(torch.randn(n_items, d, n_states) * 0.02)
        self.assertion_bias = nn.Parameter(torch.zeros(n_items, n_states))

    def add_assertion_head(self, items: Sequence[str], states: Sequence[str]) -> bool:
        """Give the model an assertion head over ``items`` × ``states``; False when it has no such modality.

        The trainer learns the items from the cohort's annotations, after the model was built.
        """
        if self.cfg.has_assertion_head:
            raise ValueError("the model already has an assertion head")
        cfg = replace(self.cfg, assertion_items=tuple(items), assertion_states=tuple(states))
        if not cfg.has_assertion_head:
            return False
        self.cfg = cfg
        self._build_assertion_head()
        return True

    # -- stages -------------------------------------------------------------------------------------
    def precompute(self, batch: Batch) -> Batch:
        """Run each encoder's frozen, deterministic ``precompute`` (identity when it has none)."""
        out: Batch = {}
        for m, b in batch.items():
            fn = getattr(self.encoders[m], "precompute", None) if m in self.encoders else None
            out[m] = fn(b) if callable(fn) else b
        return out

    def encode(self, batch: Batch) -> dict[str, EncoderOutput]:
        """Encoder outputs per modality, with tokens of absent cases masked as padding."""
        encoded: dict[str, EncoderOutput] = {}
        for m in self.cfg.modalities:
            if m not in batch:
                continue
            eo = self.encoders[m](batch[m])
            present = batch[m]["present"].to(eo.pad_mask.device).bool()
            pad = eo.pad_mask.bool() | ~present[:, None]
            extras = dict(eo.extras)
            if LESION_KEY in extras:
                extras[LESION_KEY] = extras[LESION_KEY] + self.lesion_bias.to(extras[LESION_KEY].dtype)
            encoded[m] = EncoderOutput(eo.tokens, pad, extras)
        return encoded

    def fuse(self, encoded: Mapping[str, EncoderOutput], hide: torch.Tensor | None = None) -> torch.Tensor:
        """Case logits ``[B, len(cfg.heads)]`` from encoder outputs; ``hide`` ``[B, M]`` removes modalities."""
        any_eo = next(iter(encoded.values()))
        bsz = any_eo.tokens.shape[0]
        device = any_eo.tokens.device
        toks = [self.cls.expand(bsz, -1, -1).to(any_eo.tokens.dtype)]
        masks = [torch.zeros(bsz, 1, dtype=torch.bool, device=device)]
        for i, m in enumerate(self.cfg.modalities):
            if m not in encoded:
                continue
            eo = encoded[m]
            toks.append(eo.tokens + self.type_emb[i].to(eo.tokens.dtype))
            pad = eo.pad_mask
            if hide is not None:
                pad = pad | hide[:, i : i + 1]
            masks.append(pad)
        x = torch.cat(toks, dim=1)
        mask = torch.cat(masks, dim=1)
        x = self.fusion(x, src_key_padding_mask=mask)
        logits: torch.Tensor = self.head(self.norm(x[:, 0]))
        if self.cfg.late_fusion:
            logits = logits + self._late(encoded, hide)
        return logits

    def _late(self, encoded: Mapping[str, EncoderOutput], hide: torch.Tensor | None) -> torch.Tensor:
        """Sum over visible modalities of each one's attention-pooled linear logit."""
        any_eo = next(iter(encoded.values()))
        total = any_eo.tokens.new_zeros(any_eo.tokens.shape[0], len(self.cfg.heads))
        for i, m in enumerate(self.cfg.modalities):
            if m not in encoded:
                continue
            eo = encoded[m]
            pad = eo.pad_mask if hide is None else eo.pad_mask | hide[:, i : i + 1]
            score = self.late_score[m](eo.tokens).squeeze(-1).float().masked_fill(pad, float("-inf"))
            shown = ~pad.all(dim=1)
            # Rows with every token hidden would give NaN weights; they contribute exactly 0.
            weights = torch.softmax(score.masked_fill(~shown[:, None], 0.0), dim=1).to(eo.tokens.dtype)
            pooled = (weights[..., None] * eo.tokens).sum(1)
            term = self.late_heads[m](pooled) * shown[:, None].to(eo.tokens.dtype)
            total = total + term
        return total

    def aux(self, encoded: Mapping[str, EncoderOutput]) -> dict[str, torch.Tensor]:
        """Per-modality logits from mean-pooled non-padding tokens (rows without tokens give 0-input)."""
        out: dict[str, torch.Tensor] = {}
        for m, eo in encoded.items():
            keep = (~eo.pad_mask).to(eo.tokens.dtype)[..., None]
            pooled = (eo.tokens * keep).sum(1) / keep.sum(1).clamp_min(1.0)
            out[m] = self.aux_heads[m](pooled)
        return out

    def assertion_logits(self, encoded: Mapping[str, EncoderOutput]) -> torch.Tensor | None:
        """``[B, items, states]`` assertion logits from the notes tokens; None without the head or the notes.

        Rows of cases without notes are finite but meaningless; the loss skips them.
        """
        m = self.cfg.assertion_modality
        if not self.cfg.has_assertion_head or m not in encoded:
            return None
        eo = encoded[m]
        tokens = eo.tokens
        q = self.assertion_query.to(tokens.dtype)
        score = torch.einsum("bkd,fd->bfk", tokens, q) / float(tokens.shape[-1]) ** 0.5
        pad = eo.pad_mask[:, None, :]
        empty = pad.all(dim=-1, keepdim=True)
        # A case without notes has every token padded: give it uniform weights instead of NaN.
        weights = torch.softmax(score.float().masked_fill(pad & ~empty, float("-inf")), dim=-1).to(tokens.dtype)
        pooled = torch.einsum("bfk,bkd->bfd", weights, tokens)
        w = self.assertion_weight.to(tokens.dtype)
        return torch.einsum("bfd,fdc->bfc", pooled, w) + self.assertion_bias.to(tokens.dtype)

    def visible(self, batch: Batch) -> torch.Tensor:
        """``[B, M]`` bool: which modalities each case has."""
        ref = next(iter(batch.values()))["present"]
        cols = [
            batch[m]["present"].bool() if m in batch else torch.zeros_like(ref, dtype=torch.bool)
            for m in self.cfg.modalities
        ]
        return torch.stack(cols, dim=1)

    def sample_hide(self, visible: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Modality dropout: hide each present modality with probability p, but keep at least one."""
        p = self.cfg.modality_dropout
        r = torch.rand(visible.shape, generator=generator, device=visible.device)
        keep = visible & (r >= p)
        none_left = ~keep.any(dim=1)
        if none_left.any():
            # Keep the present modality with the highest random score: uniform among those present.
            score = torch.where(visible, r, torch.full_like(r, -1.0))
            rescue = torch.nn.functional.one_hot(score.argmax(dim=1), visible.shape[1]).bool()
            keep = torch.where(none_left[:, None], rescue & visible, keep)
        return visible & ~keep

    def forward(
        self,
        batch: Batch,
        hide: torch.Tensor | None = None,
        modality_dropout: bool = False,
        generator: torch.Generator | None = None,
    ) -> ModelOutput:
        """Full pass on an already precomputed batch."""
        encoded = self.encode(batch)
        vis = self.visible(batch).to(next(iter(encoded.values())).tokens.device)
        if hide is None and modality_dropout and self.cfg.modality_dropout > 0:
            hide = self.sample_hide(vis, generator)
        logits = self.fuse(encoded, hide)
        extras = {m: dict(eo.extras) for m, eo in encoded.items() if eo.extras}
        shown = vis if hide is None else vis & ~hide
        return ModelOutput(logits, self.aux(encoded), extras, shown, self.assertion_logits(encoded))

    def calibrated_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Sigmoid of temperature-scaled logits, per head."""
        temp: torch.Tensor = self.temperature  # type: ignore[assignment]
        return torch.sigmoid(self.adjusted(logits) / temp.to(logits.device))

    def adjusted(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits with the class-weighting offset removed (before temperature)."""
        offset: torch.Tensor = self.logit_offset  # type: ignore[assignment]
        return logits.float() + offset.to(logits.device)


def modality_index(cfg: FusionConfig, names: Sequence[str]) -> list[int]:
    """Column indices of ``names`` in ``[B, M]`` masks (unknown names ignored)."""
    return [cfg.modalities.index(n) for n in names if n in cfg.modalities]
