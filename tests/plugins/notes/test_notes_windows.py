"""Window splitting and note decoding (no model needed)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mmclinic_clinical_notes.windows import decode_note, split_windows, window_inputs

from mmclinic.errors import InputError


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, 3000), content=st.integers(1, 80), data=st.data())
def test_every_token_owned_exactly_once(n: int, content: int, data: st.DataObject) -> None:
    stride = data.draw(st.integers(1, content))
    windows = split_windows(n, content, stride)
    owners = [0] * n
    for i, w in enumerate(windows):
        assert 0 <= w.start < w.end <= n and w.end - w.start <= content
        assert w.start <= w.own_start <= w.own_end <= w.end  # a window owns only tokens it contains
        if i:
            assert w.start == windows[i - 1].start + stride
        for p in range(w.own_start, w.own_end):
            owners[p] += 1
    assert owners == [1] * n
    if n:
        assert windows[-1].end == n
        assert len(windows) == 1 + max(0, -(-(n - content) // stride))


def test_long_sequence_gets_several_windows_and_reassembles() -> None:
    ids = list(range(1000, 1250))
    windows = split_windows(len(ids), 62, 40)
    assert len(windows) == 6
    built = window_inputs(ids, windows, (101,), (102,))
    kept: list[int] = []
    for seq, keep in built:
        assert seq[0] == 101 and seq[-1] == 102 and len(seq) <= 64
        assert not keep[0] and not keep[-1]  # special tokens are never pooled
        kept += [t for t, k in zip(seq, keep, strict=True) if k]
    assert kept == ids


def test_owned_tokens_have_context_on_both_sides() -> None:
    # With 22 tokens of overlap, the boundary sits in the middle: each side keeps ~11 tokens of context.
    a, b = split_windows(200, 62, 40)[:2]
    assert a.own_end == b.own_start == 51


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "notes.empty"),
        (b"  \n\t\r\n ", "notes.empty"),
        (b"patient \xff\xfe note", "notes.not_utf8"),
        (b"caf\xe9", "notes.not_utf8"),  # Latin-1, not UTF-8
        (b"x" * 101, "notes.too_large"),
        ("a str, not bytes", "notes.invalid"),
        (None, "notes.invalid"),
    ],
)
def test_decode_rejects(data: object, reason: str) -> None:
    with pytest.raises(InputError) as exc:
        decode_note(data, max_bytes=100, index=3)
    assert exc.value.reason == reason
    assert "note 3" in exc.value.detail


def test_decode_accepts_utf8_and_strips_bom() -> None:
    assert decode_note("\ufeffCaf\u00e9 note".encode(), 100, 0) == "Caf\u00e9 note"
    assert decode_note(b"x" * 100, 100, 0) == "x" * 100  # the cap is inclusive
