"""Configuration schema of the clinical-notes plugin (validated by the registry from ``plugins.clinical-notes``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Note types that get their own learned embedding; anything else shares the "other" slot (index 0).
# Matching is on ``note_type_key`` ("Radiology request" and "radiology_request" are the same type).
DEFAULT_NOTE_TYPES: tuple[str, ...] = (
    "clinical_note",
    "progress_note",
    "primary_care_note",
    "pulmonology_consult",
    "oncology_consult",
    "radiology_request",
    "radiology_report",
    "pathology_report",
    "discharge_summary",
)


def note_type_key(note_type: str) -> str:
    """Canonical spelling of a note type: lower case, runs of other characters as one underscore."""
    return re.sub(r"[^a-z0-9]+", "_", note_type.casefold()).strip("_")


class NotesConfig(BaseModel):
    """Options of the clinical-notes plugin."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # A local Hugging Face model folder (e.g. a clinical BERT); None = the bundled all-MiniLM-L6-v2.
    model_path: Path | None = None
    # What one pooled state stands for. "sentence": every sentence (or clause ending in ";" or ":") is
    # encoded on its own and mean-pooled, the way all-MiniLM-L6-v2 was trained to embed text; the
    # attention pooling then chooses among ~10² sentence states instead of ~10³ token states. On the
    # synthetic cohort this took a notes-only model from validation AUROC ~0.6 to 0.72 (notes oracle 0.75),
    # so it is the default since 0.2.0. "window": overlapping windows over each whole note, one state per
    # token (the 0.1 behaviour; a checkpoint records its unit and a mismatch is refused).
    unit: Literal["sentence", "window"] = "sentence"
    # unit=sentence: longest piece in tokens, special tokens included; a longer sentence is cut into
    # consecutive pieces of this length (nothing is dropped).
    max_sentence_length: int = Field(default=128, ge=8)
    # unit=sentence: bounds compute and memory for one case (over the cap -> notes.too_large).
    max_sentences_per_case: int = Field(default=1024, ge=1)
    # unit=sentence: states of this many distinct sentence pieces are kept per process (about 1.7 kB
    # each with MiniLM); templated sentences recur across notes and patients. 0 disables the cache.
    sentence_cache_size: int = Field(default=50_000, ge=0)
    # unit=window: window length in tokens, special tokens included; must not exceed the model's position limit.
    window_length: int = Field(default=256, ge=8)
    # Step between window starts in content tokens; must be <= the window's content length so no token is skipped.
    window_stride: int = Field(default=192, ge=1)
    max_note_bytes: int = Field(default=64 * 1024, ge=1)
    # unit=window: bounds compute and memory for one case (over the cap -> notes.too_large).
    max_windows_per_case: int = Field(default=128, ge=1)
    # N > 0 fine-tunes the top N transformer layers; precompute then stops below them.
    finetune_top_layers: int = Field(default=0, ge=0)
    # CPU inference of the frozen part with dynamic int8 quantization of its Linear layers.
    quantize_int8: bool = False
    pool_heads: int = Field(default=4, ge=1)
    # Width of the attention pooling (token states are projected down to it first).
    pool_dim: int = Field(default=64, ge=4)
    note_types: tuple[str, ...] = DEFAULT_NOTE_TYPES
    # Backbone calls inside precompute take at most window_batch_size × window_length tokens (padding
    # included), which bounds peak memory on long cases.
    window_batch_size: int = Field(default=32, ge=1)

    @model_validator(mode="after")
    def _stride_fits_window(self) -> NotesConfig:
        # The model adds at most a few special tokens (2 for BERT-style models); the exact count is
        # re-checked against the tokenizer when it is loaded.
        if self.window_stride > self.window_length - 2:
            raise ValueError(
                f"window_stride ({self.window_stride}) must be <= window_length - 2 ({self.window_length - 2}) "
                "or tokens between windows would be skipped"
            )
        return self
