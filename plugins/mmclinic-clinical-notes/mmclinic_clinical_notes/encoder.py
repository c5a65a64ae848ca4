"""Notes encoder: frozen transformer (precompute) -> sentence or token states -> attention pooling to K tokens.

Batch formats (every tensor has the case axis first, and zero / False is padding on every other
axis, so the trainer can cache ``precompute`` output per case and re-stack it by zero-padding).
A "window" below is one model sequence: a sentence piece (unit=sentence) or an overlapping window.

* collated: ``input_ids`` / ``attention_mask`` long [B, W, T], ``keep_mask`` bool [B, W, T] (content
  tokens a window owns), ``window_type`` long [B, W], ``present`` bool [B];
* precomputed, all layers frozen: ``token_states`` float [B, L, H] (one state per sentence piece, the
  mean of its content tokens, or one per owned token), ``token_valid`` bool [B, L],
  ``token_type`` long [B, L], ``present``;
* precomputed with ``finetune_top_layers = N > 0``: ``hidden`` float [B, W, T, H] (output of the frozen
  layers), ``attention_mask``, ``keep_mask``, ``window_type``, ``present``.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, cast

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from mmclinic.errors import ConfigError, ModelError
from mmclinic.logs import event
from mmclinic.plugin_api import EncoderOutput
from mmclinic.threads import torch_threads
from mmclinic_clinical_notes.backbone import (
    attention_mask_for_layers,
    backbone_parts,
    get_model,
    resolve_model_path,
    run_layers,
    weights_sha256,
)
from mmclinic_clinical_notes.config import NotesConfig
from mmclinic_clinical_notes.piece_cache import piece_cache

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


class NotesEncoder(nn.Module):
    """Text tokens ``[B, K, d_model]`` for a batch of cases; the frozen model is shared, not a submodule.

    The frozen part lives in the per-process model cache, so checkpoints hold only the trainable
    part (pooling, projection, fine-tuned top layers) plus the backbone's weights SHA-256, which
    ``load_state_dict`` checks so that pooling weights are never paired with another backbone.
    """

    def __init__(self, config: NotesConfig, d_model: int, max_tokens: int) -> None:
        super().__init__()
        self.config = config
        self.model_path = resolve_model_path(config.model_path)
        self.backbone_sha256 = weights_sha256(self.model_path)
        base = get_model(self.model_path, "fp32", "cpu")
        self.hf_config: Any = cast(Any, base.config)  # a transformers PretrainedConfig
        self.hidden_size = int(self.hf_config.hidden_size)
        n_layers = int(self.hf_config.num_hidden_layers)
        if config.finetune_top_layers > n_layers:
            raise ConfigError(
                "notes.bad_finetune_layers", f"finetune_top_layers={config.finetune_top_layers} > {n_layers} layers"
            )
        self.frozen_layers = n_layers - config.finetune_top_layers
        self.top_layers = nn.ModuleList()
        if config.finetune_top_layers:
            _, layers = backbone_parts(base)
            # Copies: fine-tuning must not change the shared frozen model other encoders use.
            self.top_layers.extend(copy.deepcopy(layers[i]) for i in range(self.frozen_layers, n_layers))
            for p in self.top_layers.parameters():
                p.requires_grad_(True)
        h = self.hidden_size
        self.max_tokens = max_tokens
        # Index 0 is "other / unknown note type"; starts at zero so an untrained encoder ignores types.
        self.type_embedding = nn.Embedding(len(config.note_types) + 1, h)
        nn.init.zeros_(self.type_embedding.weight)
        self.norm = nn.LayerNorm(h)
        # Pooling runs in a smaller space: a case has ~1-2 k owned tokens, and attention's key/value
        # projections at the backbone's width (H² per token, twice) dominated every training epoch.
        # One H→P projection per token first makes that ~9× cheaper at P = 64.
        p = config.pool_dim
        self.down = nn.Linear(h, p)
        self.queries = nn.Parameter(torch.randn(max_tokens, p) * 0.02)
        heads = config.pool_heads if p % config.pool_heads == 0 else 1
        self.attn = nn.MultiheadAttention(p, heads, batch_first=True)
        self.proj = nn.Linear(p, d_model)
        self.out_norm = nn.LayerNorm(d_model)
        self._warned_int8_device = False

    # -- frozen part -------------------------------------------------------------------------

    def _frozen_model(self, device: torch.device) -> nn.Module:
        if self.config.quantize_int8 and device.type == "cpu":
            return get_model(self.model_path, "int8", device)
        if self.config.quantize_int8 and not self._warned_int8_device:
            event(log, "notes.int8_skipped", device=device.type)
            self._warned_int8_device = True
        return get_model(self.model_path, "fp32", device)

    def _run_frozen(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[n, T, H]`` of the frozen layers for ``n`` windows; zero at padding."""
        n, t = ids.shape
        out = torch.zeros(n, t, self.hidden_size, device=ids.device)
        if n == 0:
            return out
        model = self._frozen_model(ids.device)
        lengths = mask.sum(-1)
        # Length-sorted chunks trimmed to their own longest window: short windows (and sentences) do
        # not pay for the batch's longest one, and a token budget bounds each call's memory.
        order = torch.argsort(lengths, descending=True)
        for chunk in self._chunks(order, lengths):
            t_max = int(lengths[chunk].max())
            c_ids, c_mask = ids[chunk, :t_max], mask[chunk, :t_max]
            if self.top_layers:
                embeddings, layers = backbone_parts(model)
                hidden = embeddings(input_ids=c_ids)
                layer_mask = attention_mask_for_layers(self.hf_config, hidden, c_mask)
                hidden = run_layers(layers[: self.frozen_layers], hidden, layer_mask)
            else:
                hidden = model(input_ids=c_ids, attention_mask=c_mask).last_hidden_state
            out[chunk, :t_max] = hidden.float() * c_mask.unsqueeze(-1)
        return out

    def _chunks(self, order: torch.Tensor, lengths: torch.Tensor) -> list[torch.Tensor]:
        """Split length-sorted (longest first) windows into calls of at most the token budget, padding included."""
        budget = self.config.window_batch_size * self.config.window_length
        chunks: list[torch.Tensor] = []
        start, n = 0, int(order.shape[0])
        while start < n:
            longest = max(int(lengths[order[start]]), 1)
            size = max(1, min(n - start, budget // longest))
            chunks.append(order[start : start + size])
            start += size
        return chunks

    @torch.no_grad()
    def precompute(self, batch: Batch) -> Batch:
        """Run the frozen layers (deterministic, no grad); idempotent on an already precomputed batch."""
        if "input_ids" not in batch:
            return batch
        ids, mask, keep = batch["input_ids"], batch["attention_mask"], batch["keep_mask"]
        valid = mask.bool().any(-1)
        if self.config.unit == "sentence" and not self.top_layers:
            states = self._piece_states(ids[valid], mask[valid], keep[valid])
            return self._gather(states, batch["window_type"][valid], valid.sum(1), batch["present"])
        hidden = self._run_frozen(ids[valid], mask[valid])
        if self.top_layers:
            full = torch.zeros(*ids.shape, self.hidden_size, device=ids.device)
            full[valid] = hidden
            return {
                "hidden": full,
                "attention_mask": mask,
                "keep_mask": keep,
                "window_type": batch["window_type"],
                "present": batch["present"],
            }
        return self._states(hidden, valid, keep, batch["window_type"], batch["present"])

    def _piece_states(self, ids: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """One state per sentence piece ``[n, H]``: the mean of the frozen model's content-token states.

        Each distinct piece runs once, alone in its call, so there is no padding and its state does
        not depend on which other text is scored with it. Templated
        text repeats across notes and patients, so states are also kept in a bounded cache.
        """
        n = ids.shape[0]
        out = torch.zeros(n, self.hidden_size, device=ids.device)
        if n == 0:
            return out
        model = self._frozen_model(ids.device)
        cache = piece_cache(self.config.sentence_cache_size)
        scope = (str(self.model_path), id(model), torch.is_autocast_enabled(ids.device.type))
        lengths = mask.sum(-1).tolist()
        rows: dict[tuple[int, ...], list[int]] = {}
        for i, length in enumerate(lengths):
            rows.setdefault(tuple(ids[i, :length].tolist()), []).append(i)
        todo: list[tuple[int, ...]] = []
        for key, where in rows.items():
            hit = cache.get(scope, key)
            if hit is None:
                todo.append(key)
            else:
                out[where] = hit.to(out.device)
        # Each piece runs alone, on one intra-op thread: the products' shapes and their split then depend
        # on the piece only. Sharing a call with other pieces, or a second thread, changes the BLAS
        # kernel for these few-row products and so a state's last bits: a risk then depended on its
        # batch and differed between a two-thread process and a one-thread Ray worker.
        with torch_threads(1 if ids.device.type == "cpu" else 0):
            for key in todo:
                where = rows[key]
                keep_row = keep[where[0], : len(key)].to(torch.float32)
                x = torch.tensor([key], dtype=torch.long, device=out.device)
                hidden = model(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state.float()
                state = ((hidden[0] * keep_row[:, None]).sum(0) / keep_row.sum().clamp(min=1.0)).detach()
                out[where] = state
                cache.put(scope, key, state.cpu())
        return out

    def _states(
        self, hidden: torch.Tensor, valid: torch.Tensor, keep: torch.Tensor, window_type: torch.Tensor, present: Any
    ) -> Batch:
        """Each case's states into ``[B, L, H]``: one per sentence piece, or one per owned content token."""
        keep_flat = keep[valid]  # [n, T], windows in (case, window) order
        if self.config.unit == "sentence":
            # Mean over the piece's content tokens: the sentence embedding the backbone was trained for.
            w = keep_flat.unsqueeze(-1).to(hidden.dtype)
            states = (hidden * w).sum(1) / w.sum(1).clamp(min=1.0)
            return self._gather(states, window_type[valid], valid.sum(1), present)
        states = hidden[keep_flat]
        types = window_type[valid].unsqueeze(-1).expand_as(keep_flat)[keep_flat]
        return self._gather(states, types, keep.flatten(1).sum(1), present)

    def _gather(self, states: torch.Tensor, types: torch.Tensor, counts: torch.Tensor, present: Any) -> Batch:
        """Split ``states`` [n, H] (case-major) into zero-padded ``[B, L, H]`` by per-case ``counts``."""
        b = counts.shape[0]
        parts = list(torch.split(states, counts.tolist()))
        type_parts = list(torch.split(types, counts.tolist()))
        # At least one (padding) position so that shapes stay valid when every case is absent.
        parts.append(states.new_zeros(1, self.hidden_size))
        type_parts.append(types.new_zeros(1))
        token_states = pad_sequence(parts, batch_first=True)[:b]
        token_type = pad_sequence(type_parts, batch_first=True)[:b]
        length = token_states.shape[1]
        token_valid = torch.arange(length, device=counts.device).unsqueeze(0) < counts.unsqueeze(1)
        return {"token_states": token_states, "token_valid": token_valid, "token_type": token_type, "present": present}

    # -- trainable part ----------------------------------------------------------------------

    def _run_top(self, batch: Batch) -> Batch:
        hidden, mask, keep = batch["hidden"], batch["attention_mask"], batch["keep_mask"]
        valid = mask.bool().any(-1)
        h, m = hidden[valid], mask[valid]
        if h.shape[0]:
            t_max = int(m.sum(-1).max())
            h, m = h[:, :t_max], m[:, :t_max]
            h = run_layers(self.top_layers, h, attention_mask_for_layers(self.hf_config, h, m)) * m.unsqueeze(-1)
            keep = keep[:, :, :t_max]
        return self._states(h, valid, keep, batch["window_type"], batch["present"])

    def forward(self, batch: Batch) -> EncoderOutput:
        """Pooled text tokens; accepts a collated or a precomputed batch."""
        if "input_ids" in batch:
            batch = self.precompute(batch)
        if "hidden" in batch:
            batch = self._run_top(batch)
        states, types = batch["token_states"], batch["token_type"]
        valid = batch["token_valid"] & batch["present"].bool().unsqueeze(1)
        n_tokens = valid.sum(1)
        x = self.down(self.norm(states + self.type_embedding(types)))
        key_padding = ~valid
        # A row with every key masked gives NaN in softmax; unmask one (zero) key for absent cases
        # and discard their output below.
        key_padding[:, 0] &= n_tokens > 0
        queries = self.queries.unsqueeze(0).expand(states.shape[0], -1, -1)
        pooled, _ = self.attn(queries, x, x, key_padding_mask=key_padding, need_weights=False)
        tokens = self.out_norm(self.proj(pooled))
        # At most K tokens: a case with fewer content tokens than K gets that many; absent -> none.
        pad_mask = torch.arange(self.max_tokens, device=states.device).unsqueeze(0) >= n_tokens.unsqueeze(1)
        tokens = tokens.masked_fill(pad_mask.unsqueeze(-1), 0.0)
        weights = valid.unsqueeze(-1).to(states.dtype)
        mean_state = (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return EncoderOutput(tokens=tokens, pad_mask=pad_mask, extras={"mean_state": mean_state})

    # -- checkpoints -------------------------------------------------------------------------

    def get_extra_state(self) -> dict[str, Any]:
        return {
            "backbone_sha256": self.backbone_sha256,
            "finetune_top_layers": self.config.finetune_top_layers,
            "unit": self.config.unit,
        }

    def set_extra_state(self, state: Any) -> None:
        want = state.get("backbone_sha256") if isinstance(state, dict) else None
        if want != self.backbone_sha256:
            raise ModelError(
                "model.backbone_mismatch",
                f"checkpoint's notes backbone is {str(want)[:12]}, the configured one {self.backbone_sha256[:12]}",
            )
        # Pooling weights learnt over sentence states mean nothing over token states, and back.
        unit = state.get("unit", "window")  # checkpoints from before the option pooled tokens
        if unit != self.config.unit:
            raise ModelError(
                "model.notes_unit_mismatch",
                f"checkpoint's notes encoder pools {unit} states, the plugin is configured for unit={self.config.unit}",
            )
