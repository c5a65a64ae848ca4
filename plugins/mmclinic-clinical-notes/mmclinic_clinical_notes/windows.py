"""Note validation (bytes -> text), sentence splitting, and overlapping windows where every token has one owner."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mmclinic.errors import InputError


def decode_note(data: object, max_bytes: int, index: int) -> str:
    """Validated text of one note; InputError ``notes.invalid`` / ``too_large`` / ``not_utf8`` / ``empty``."""
    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise InputError("notes.invalid", f"note {index}: data must be bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise InputError("notes.too_large", f"note {index}: {len(data)} bytes exceeds the cap of {max_bytes}")
    try:
        # utf-8-sig: a byte-order mark written by some editors is not part of the text.
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError("notes.not_utf8", f"note {index}: invalid UTF-8 at byte {exc.start}") from None
    if not text.strip():
        raise InputError("notes.empty", f"note {index}: no text")
    return text


@dataclass(frozen=True)
class Window:
    """Content tokens ``[start, end)`` of a note; the window owns ``[own_start, own_end)`` of them."""

    start: int
    end: int
    own_start: int
    own_end: int


def split_windows(n_tokens: int, content_length: int, stride: int) -> list[Window]:
    """Overlapping windows covering ``n_tokens`` content tokens.

    Consecutive windows start ``stride`` apart. Tokens in an overlap appear in two windows, but
    only one window owns each token: the boundary is the middle of the overlap, so every owned
    token has context on both sides. Pooling uses owned tokens only, which counts each token once.
    """
    if content_length < 1 or not 1 <= stride <= content_length:
        raise ValueError(f"need 1 <= stride ({stride}) <= content_length ({content_length})")
    if n_tokens <= 0:
        return []
    starts = [0]
    while starts[-1] + content_length < n_tokens:
        starts.append(starts[-1] + stride)
    ends = [min(s + content_length, n_tokens) for s in starts]
    bounds = [0] + [(starts[i] + ends[i - 1] + 1) // 2 for i in range(1, len(starts))] + [n_tokens]
    return [Window(s, e, bounds[i], bounds[i + 1]) for i, (s, e) in enumerate(zip(starts, ends, strict=True))]


def window_inputs(
    ids: list[int], windows: list[Window], prefix: tuple[int, ...], suffix: tuple[int, ...]
) -> list[tuple[list[int], list[bool]]]:
    """Per window: model input ids (special tokens added) and the keep flags of owned content tokens."""
    out: list[tuple[list[int], list[bool]]] = []
    for w in windows:
        seq = [*prefix, *ids[w.start : w.end], *suffix]
        keep = [False] * len(prefix)
        keep += [w.own_start <= p < w.own_end for p in range(w.start, w.end)]
        keep += [False] * len(suffix)
        out.append((seq, keep))
    return out


# A sentence ends at . ! ? ; or : followed by white space, or at a line break. Clauses ending in ";"
# or ":" count as sentences because notes list findings that way ("INDICATION: smoker; hemoptysis").
# Decimals ("2.5 mg") and times ("10:30") have no space after the mark and stay whole.
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|\s*\n\s*")


def split_sentences(text: str) -> list[str]:
    """Non-empty sentences of ``text`` in order; joining them with spaces loses only white space."""
    return [s for s in (part.strip() for part in _SENTENCE_END.split(text)) if s]


def sentence_inputs(
    sentence_ids: list[list[int]], content_length: int, prefix: tuple[int, ...], suffix: tuple[int, ...]
) -> list[tuple[list[int], list[bool]]]:
    """Per piece: model input ids and keep flags (content tokens); a long sentence is cut into pieces."""
    if content_length < 1:
        raise ValueError(f"content_length must be >= 1, got {content_length}")
    out: list[tuple[list[int], list[bool]]] = []
    for ids in sentence_ids:
        for start in range(0, len(ids), content_length):
            piece = ids[start : start + content_length]
            out.append(
                ([*prefix, *piece, *suffix], [False] * len(prefix) + [True] * len(piece) + [False] * len(suffix))
            )
    return out
