"""The ``clinical-notes`` modality plugin: validate and window notes, fingerprint, collate, build the encoder."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from mmclinic.case import NOTES, NoteRef, sha256_bytes
from mmclinic.errors import ConfigError, InputError
from mmclinic.logs import event
from mmclinic.plugin_api import ModalityInput, ModalityPlugin, TaskSpec
from mmclinic_clinical_notes import __version__
from mmclinic_clinical_notes.backbone import TokenizerInfo, get_tokenizer, resolve_model_path
from mmclinic_clinical_notes.config import NotesConfig, note_type_key
from mmclinic_clinical_notes.encoder import NotesEncoder
from mmclinic_clinical_notes.windows import (
    decode_note,
    sentence_inputs,
    split_sentences,
    split_windows,
    window_inputs,
)

log = logging.getLogger(__name__)


def _note_list(ref: Any) -> list[NoteRef]:
    if ref is None:
        return []
    if isinstance(ref, NoteRef):
        return [ref]
    if not isinstance(ref, list | tuple):
        raise InputError("notes.invalid", f"expected a list of NoteRef, got {type(ref).__name__}")
    for i, note in enumerate(ref):
        if not isinstance(note, NoteRef):
            raise InputError("notes.invalid", f"note {i}: expected NoteRef, got {type(note).__name__}")
    return list(ref)


class ClinicalNotesPlugin(ModalityPlugin):
    """Clinical notes -> sentences (or windows) -> frozen transformer -> attention-pooled text tokens."""

    name: ClassVar[str] = "clinical-notes"
    version: ClassVar[str] = __version__
    modality: ClassVar[str] = NOTES
    Config = NotesConfig

    @property
    def cfg(self) -> NotesConfig:
        assert isinstance(self.config, NotesConfig)
        return self.config

    def tokenizer(self) -> TokenizerInfo:
        """The configured model's tokenizer; ConfigError when windows do not fit the model."""
        info = get_tokenizer(resolve_model_path(self.cfg.model_path))
        if self.cfg.unit == "sentence":
            if self.cfg.max_sentence_length > info.max_positions:
                raise ConfigError(
                    "notes.sentence_too_long",
                    f"max_sentence_length {self.cfg.max_sentence_length} > model limit {info.max_positions}",
                )
            if self.cfg.max_sentence_length <= len(info.prefix) + len(info.suffix):
                raise ConfigError("notes.sentence_too_short", "max_sentence_length leaves no room for content")
            return info
        if self.cfg.window_length > info.max_positions:
            raise ConfigError(
                "notes.window_too_long", f"window_length {self.cfg.window_length} > model limit {info.max_positions}"
            )
        if self.cfg.window_stride > self.content_length(info):
            raise ConfigError("notes.bad_stride", f"window_stride {self.cfg.window_stride} skips tokens")
        return info

    def content_length(self, info: TokenizerInfo) -> int:
        """Content tokens per model sequence (a window or a sentence piece, minus the special tokens)."""
        length = self.cfg.max_sentence_length if self.cfg.unit == "sentence" else self.cfg.window_length
        return length - len(info.prefix) - len(info.suffix)

    def _sequences(self, info: TokenizerInfo, text: str, ids: list[int]) -> list[tuple[list[int], list[bool]]]:
        """Model inputs of one note: its sentence pieces, or its overlapping windows."""
        content = self.content_length(info)
        if self.cfg.unit == "sentence":
            return sentence_inputs(info.encode_many(split_sentences(text)), content, info.prefix, info.suffix)
        windows = split_windows(len(ids), content, self.cfg.window_stride)
        return window_inputs(ids, windows, info.prefix, info.suffix)

    def load(self, ref: Any, spec: TaskSpec) -> ModalityInput:
        """Validate, tokenize and window one case's notes; zero notes is an absent modality (no data)."""
        notes = _note_list(ref)
        cfg = self.cfg
        if not notes:
            return ModalityInput(NOTES, data={}, fingerprint={}, summary={"n_notes": 0, "present": False})
        info = self.tokenizer()
        sentences = cfg.unit == "sentence"
        cap = cfg.max_sentences_per_case if sentences else cfg.max_windows_per_case
        type_index = {note_type_key(t): i + 1 for i, t in enumerate(cfg.note_types)}
        seqs: list[list[int]] = []
        keeps: list[list[bool]] = []
        types: list[int] = []
        fingerprint: dict[str, str] = {}
        per_note: list[dict[str, Any]] = []
        for i, note in enumerate(notes):
            text = decode_note(note.data, cfg.max_note_bytes, i)
            ids = info.encode(text)
            if not ids:  # only characters the tokenizer drops (control / zero-width)
                raise InputError("notes.empty", f"note {i}: no tokens")
            sequences = self._sequences(info, text, ids)
            if len(seqs) + len(sequences) > cap:
                what = "sentences" if sentences else f"windows of {cfg.window_length} tokens"
                raise InputError("notes.too_large", f"case needs more than {cap} {what}")
            for seq, keep in sequences:
                seqs.append(seq)
                keeps.append(keep)
                types.append(type_index.get(note_type_key(note.note_type), 0))
            fingerprint[f"note.{i}"] = sha256_bytes(note.data)
            per_note.append(
                {
                    "index": i,
                    "note_type": note.note_type,
                    "note_date": note.note_date.isoformat() if note.note_date else None,
                    "bytes": len(note.data),
                    "tokens": len(ids),
                    ("sentences" if sentences else "windows"): len(sequences),
                }
            )
        # Combined over the ordered per-note digests, so it changes when any note or the order changes.
        # (Keys are unprefixed: the engine records them as "notes:note.0", "notes:combined".)
        fingerprint["combined"] = sha256_bytes("\n".join(fingerprint[f"note.{i}"] for i in range(len(notes))).encode())
        t = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), t), info.pad_id, dtype=torch.long)
        attention = torch.zeros(len(seqs), t, dtype=torch.long)
        keep_mask = torch.zeros(len(seqs), t, dtype=torch.bool)
        for w, (seq, keep) in enumerate(zip(seqs, keeps, strict=True)):
            input_ids[w, : len(seq)] = torch.tensor(seq)
            attention[w, : len(seq)] = 1
            keep_mask[w, : len(keep)] = torch.tensor(keep)
        summary = {
            "n_notes": len(notes),
            "present": True,
            "total_tokens": sum(n["tokens"] for n in per_note),
            "unit": cfg.unit,
            ("total_sentences" if sentences else "total_windows"): len(seqs),
            **(
                {"max_sentence_length": cfg.max_sentence_length}
                if sentences
                else {"window_length": cfg.window_length, "window_stride": cfg.window_stride}
            ),
            "notes": per_note,
        }
        event(
            log, "notes.loaded", n_notes=len(notes), tokens=summary["total_tokens"], sequences=len(seqs), unit=cfg.unit
        )
        return ModalityInput(
            NOTES,
            data={
                "input_ids": input_ids,
                "attention_mask": attention,
                "keep_mask": keep_mask,
                "window_type": torch.tensor(types, dtype=torch.long),
            },
            fingerprint=fingerprint,
            summary=summary,
        )

    def collate(self, items: Sequence[ModalityInput | None], spec: TaskSpec) -> dict[str, torch.Tensor]:
        """Per-case padded windows ``[B, W, T]`` (see ``encoder`` module docstring) + ``present``."""
        cases = [it.data if it is not None and "input_ids" in it.data else None for it in items]
        b = len(cases)
        w = max([c["input_ids"].shape[0] for c in cases if c is not None], default=1)
        t = max([c["input_ids"].shape[1] for c in cases if c is not None], default=1)
        pad_id = self.tokenizer().pad_id
        out = {
            "input_ids": torch.full((b, w, t), pad_id, dtype=torch.long),
            "attention_mask": torch.zeros(b, w, t, dtype=torch.long),
            "keep_mask": torch.zeros(b, w, t, dtype=torch.bool),
            "window_type": torch.zeros(b, w, dtype=torch.long),
            "present": torch.tensor([c is not None for c in cases], dtype=torch.bool),
        }
        for i, c in enumerate(cases):
            if c is None:
                continue
            cw, ct = c["input_ids"].shape
            for key in ("input_ids", "attention_mask", "keep_mask"):
                out[key][i, :cw, :ct] = c[key]
            out["window_type"][i, :cw] = c["window_type"]
        return out

    def build_encoder(self, d_model: int, spec: TaskSpec) -> nn.Module:
        """A ``NotesEncoder`` pooling to ``spec.max_text_tokens`` tokens of width ``d_model``."""
        self.tokenizer()  # config errors surface here rather than at the first batch
        return NotesEncoder(self.cfg, d_model, spec.max_text_tokens)
