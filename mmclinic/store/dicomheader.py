"""The identifying attributes of a Part 10 file read straight from its bytes, when it is clean enough to skip pydicom.

Why: the PACS listener files every received instance by its UIDs, and ``pydicom.dcmread`` (even
stopping before the pixels) builds an element object for every attribute of the header, about
half a millisecond per CT slice of a 4 ms handler. This reader walks the same elements with
``struct`` and keeps only the six values the store needs.

It is a short path, not a second parser: whenever anything is outside what it checks for certain
(big endian or deflated data, an unknown VR, an undefined length outside a sequence, a value that
is not plain ASCII or holds several values, a length running past the end, nesting deeper than
``_MAX_DEPTH``) it returns None and the caller asks pydicom, which then decides what the file is
and which error it gets. It walks into every sequence, as pydicom does, so a structurally broken
sequence also goes to pydicom. A differential test holds it to pydicom on pydicom's own test files
and on truncated and corrupted copies of them.
"""

from __future__ import annotations

import struct

# Tag as (group << 16 | element).
SOP_CLASS = 0x00080016
SOP_INSTANCE = 0x00080018
MODALITY = 0x00080060
STUDY_INSTANCE = 0x0020000D
SERIES_INSTANCE = 0x0020000E
MEDIA_SOP_CLASS = 0x00020002
_TRANSFER_SYNTAX = 0x00020010
# pydicom's keyword for each data set tag read here (MEDIA_SOP_CLASS is a file meta element).
KEYWORDS = {
    SOP_CLASS: "SOPClassUID",
    SOP_INSTANCE: "SOPInstanceUID",
    MODALITY: "Modality",
    STUDY_INSTANCE: "StudyInstanceUID",
    SERIES_INSTANCE: "SeriesInstanceUID",
}
_VR_OF = {MODALITY: b"CS"}  # the rest are UIDs
_WANTED = frozenset(KEYWORDS)
# pydicom's stop_before_pixels stops at the first of these.
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_MAX_DEPTH = 12

_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FL FD IS LO LT PN SH SL SS ST TM UI UL US".split())
# Little-endian transfer syntaxes whose data set is explicit VR; the pixel data may be encapsulated,
# which does not matter here since the walk stops before it.
_EXPLICIT_TS = frozenset(
    {
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.5",
    }
)  # fmt: skip
_IMPLICIT_TS = "1.2.840.10008.1.2"

_TAG = struct.Struct("<HH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


class _Outside(Exception):
    """The bytes are outside what this reader handles: pydicom must look at them."""


def read_identifiers(data: bytes) -> dict[int, str] | None:
    """Tag → value of the identifying attributes present (see the module's tags), or None (ask pydicom).

    ``MEDIA_SOP_CLASS`` comes from the file meta, the others from the data set's top level.
    """
    if len(data) < 144 or data[128:132] != b"DICM":
        return None
    view = memoryview(data)
    found: dict[int, str] = {}
    try:
        meta: dict[int, str] = {}
        pos = _walk(view, 132, len(data), False, 0, meta, meta_only=True)
        ts = meta.get(_TRANSFER_SYNTAX)
        if ts is None or (ts not in _EXPLICIT_TS and ts != _IMPLICIT_TS):
            return None
        if MEDIA_SOP_CLASS in meta:
            found[MEDIA_SOP_CLASS] = meta[MEDIA_SOP_CLASS]
        _walk(view, pos, len(data), ts == _IMPLICIT_TS, 0, found, meta_only=False)
    except (_Outside, struct.error, UnicodeDecodeError):
        return None
    return found


def _walk(
    buf: memoryview, pos: int, end: int, implicit: bool, depth: int, found: dict[int, str], *, meta_only: bool
) -> int:
    """Read elements from ``pos`` to ``end`` (or to the item delimiter / pixel data); returns where it stopped.

    At depth 0 the wanted values are put in ``found``. ``meta_only`` reads the file meta group
    (always explicit VR) and stops at the first element of another group.
    """
    while pos < end:
        if end - pos < 8:
            raise _Outside
        group, elem = _TAG.unpack_from(buf, pos)
        tag = group << 16 | elem
        if meta_only and group != 2:
            return pos
        if depth == 0 and not meta_only and tag in _PIXEL_TAGS:
            # pydicom reads the element's whole header before it stops, and refuses a cut-off one.
            if end - pos < (8 if implicit else 12) or not (implicit or bytes(buf[pos + 4 : pos + 6]) in _LONG_VRS):
                raise _Outside
            return pos
        if tag == _ITEM_END and depth > 0:
            return pos
        if group == 0xFFFE:  # an item or delimiter where an element belongs
            raise _Outside
        if implicit:
            length = _U32.unpack_from(buf, pos + 4)[0]
            vr = b"SQ" if length == _UNDEFINED else b""  # no VR on the wire: undefined length means a sequence
            pos += 8
        else:
            vr = bytes(buf[pos + 4 : pos + 6])
            if vr in _LONG_VRS:
                if end - pos < 12:
                    raise _Outside
                length = _U32.unpack_from(buf, pos + 8)[0]
                pos += 12
            elif vr in _SHORT_VRS:
                length = _U16.unpack_from(buf, pos + 6)[0]
                pos += 8
            else:
                raise _Outside
        if vr == b"SQ":
            pos = _sequence(buf, pos, end, length, implicit, depth)
            continue
        if length == _UNDEFINED or pos + length > end:
            raise _Outside
        if (meta_only and tag in (MEDIA_SOP_CLASS, _TRANSFER_SYNTAX)) or (depth == 0 and tag in _WANTED):
            if vr and vr != _VR_OF.get(tag, b"UI"):  # pydicom would read it as that other VR
                raise _Outside
            found[tag] = _text(buf[pos : pos + length])
        pos += length
    if pos != end:
        raise _Outside
    return pos


def _sequence(buf: memoryview, pos: int, end: int, length: int, implicit: bool, depth: int) -> int:
    """Walk a sequence's items (defined or undefined length); returns the position after it."""
    if depth >= _MAX_DEPTH:
        raise _Outside
    stop = end if length == _UNDEFINED else pos + length
    if stop > end:
        raise _Outside
    ignored: dict[int, str] = {}
    while True:
        if length != _UNDEFINED and pos == stop:
            return pos
        if stop - pos < 8:
            raise _Outside
        group, elem = _TAG.unpack_from(buf, pos)
        tag = group << 16 | elem
        item_len = _U32.unpack_from(buf, pos + 4)[0]
        pos += 8
        if tag == _SEQ_END and length == _UNDEFINED:
            if item_len != 0:
                raise _Outside
            return pos
        if tag != _ITEM:
            raise _Outside
        if item_len == _UNDEFINED:
            pos = _walk(buf, pos, stop, implicit, depth + 1, ignored, meta_only=False)
            if pos == stop:  # ran out before the item delimiter
                raise _Outside
            if _U32.unpack_from(buf, pos + 4)[0] != 0:
                raise _Outside
            pos += 8  # the item delimiter
        else:
            item_end = pos + item_len
            if item_end > stop:
                raise _Outside
            pos = _walk(buf, pos, item_end, implicit, depth + 1, ignored, meta_only=False)


def _text(raw: memoryview) -> str:
    """One ASCII value with its trailing padding removed; anything else is pydicom's to interpret."""
    value = bytes(raw).decode("ascii").rstrip("\0 ")
    if "\\" in value or value != value.lstrip() or not value.isprintable():
        raise _Outside
    return value
