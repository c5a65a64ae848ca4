"""The listener's hot path written directly, byte for byte what pynetdicom would produce: C-STORE-RSP, Part 10 header.

Also the decoding of C-STORE requests and of P-DATA-TF PDUs, into what pynetdicom's decoders give.

pynetdicom builds each C-STORE response and each received instance's file meta as pydicom
Datasets and encodes them with pydicom's writer: about 0.8 ms and 0.65 ms per C-STORE on the
build machine, as much as the rest of the response path. Both are a handful of fixed elements
(PS3.7 9.3.1.2 in Implicit VR Little Endian; PS3.10 7.1 in Explicit VR Little Endian), so the
listener writes them itself and leaves every other message, and any value it cannot write
here, to pynetdicom. Byte-identical matters for the header: the stored file's SHA-256 decides
whether a resent instance is the same, so it must not change with this shortcut.
"""

from __future__ import annotations

import struct
from typing import Any

_C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101
# What a C-STORE response primitive may carry beyond the fields written here: present → pynetdicom encodes it.
_NOT_WRITTEN = ("OffendingElement",)


def _element(element: int, value: bytes) -> bytes:
    # Implicit VR Little Endian: group, element, 32-bit length, value (PS3.5 7.1.3).
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _text(value: str, pad: bytes) -> bytes | None:
    try:
        raw = value.encode("ascii")  # the default character repertoire of command sets
    except UnicodeEncodeError:
        return None
    return raw + pad if len(raw) % 2 else raw


def encode_store_response(
    message_id: int, sop_class: str, sop_instance: str, status: int, error_comment: str | None = None
) -> bytes | None:
    """The encoded command set, or None when a value cannot be written here (non-ASCII text)."""
    cls, inst = _text(sop_class, b"\0"), _text(sop_instance, b"\0")
    comment = _text(error_comment, b" ") if error_comment else b""
    if cls is None or inst is None or comment is None:
        return None
    body = b"".join(
        (
            _element(0x0002, cls),
            _element(0x0100, struct.pack("<H", _C_STORE_RSP)),
            _element(0x0120, struct.pack("<H", message_id)),
            _element(0x0800, struct.pack("<H", _NO_DATA_SET)),
            _element(0x0900, struct.pack("<H", status)),
            _element(0x0902, comment) if comment else b"",
            _element(0x1000, inst),
        )
    )
    return _element(0x0000, struct.pack("<I", len(body))) + body


def store_response_bytes(primitive: Any) -> bytes | None:
    """The command set of a C-STORE response primitive, or None for anything this does not write."""
    from pynetdicom.dimse_primitives import C_STORE

    if not isinstance(primitive, C_STORE) or primitive.MessageIDBeingRespondedTo is None:
        return None
    if primitive.Status is None or primitive.AffectedSOPClassUID is None or primitive.AffectedSOPInstanceUID is None:
        return None
    if any(getattr(primitive, name, None) is not None for name in _NOT_WRITTEN):
        return None
    return encode_store_response(
        int(primitive.MessageIDBeingRespondedTo),
        str(primitive.AffectedSOPClassUID),
        str(primitive.AffectedSOPInstanceUID),
        int(primitive.Status),
        primitive.ErrorComment,
    )


def _explicit(element: int, vr: bytes, value: bytes) -> bytes:
    # Explicit VR Little Endian, group 0002; OB has a 2-byte gap and a 32-bit length (PS3.5 7.1.2).
    if vr == b"OB":
        return struct.pack("<HH", 0x0002, element) + vr + struct.pack("<HI", 0, len(value)) + value
    return struct.pack("<HH", 0x0002, element) + vr + struct.pack("<H", len(value)) + value


def part10_header(sop_class: str, sop_instance: str, transfer_syntax: str) -> bytes | None:
    """Preamble, ``DICM`` and the file meta that pynetdicom's ``Event.encoded_dataset`` writes, or None."""
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION

    cls, inst, syntax, impl = (
        _text(v, b"\0") for v in (sop_class, sop_instance, transfer_syntax, PYNETDICOM_IMPLEMENTATION_UID)
    )
    version = _text(PYNETDICOM_IMPLEMENTATION_VERSION, b" ")
    if cls is None or inst is None or syntax is None or impl is None or version is None:
        return None
    body = b"".join(
        (
            _explicit(0x0001, b"OB", b"\x00\x01"),
            _explicit(0x0002, b"UI", cls),
            _explicit(0x0003, b"UI", inst),
            _explicit(0x0010, b"UI", syntax),
            _explicit(0x0012, b"UI", impl),
            _explicit(0x0013, b"SH", version),
        )
    )
    return b"\x00" * 128 + b"DICM" + _explicit(0x0000, b"UL", struct.pack("<I", len(body))) + body


# C-STORE-RQ command elements (PS3.7 9.3.1.1): keyword and how the value is held.
_STORE_RQ = {
    0x0000: ("CommandGroupLength", "UL"),
    0x0002: ("AffectedSOPClassUID", "UI"),
    0x0100: ("CommandField", "US"),
    0x0110: ("MessageID", "US"),
    0x0700: ("Priority", "US"),
    0x0800: ("CommandDataSetType", "US"),
    0x1000: ("AffectedSOPInstanceUID", "UI"),
    0x1030: ("MoveOriginatorApplicationEntityTitle", "AE"),
    0x1031: ("MoveOriginatorMessageID", "US"),
}
_C_STORE_RQ = 0x0001
_REQUIRED_RQ = ("MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID")
# The C-STORE-RQ fields a request primitive carries (the others only frame the message).
_PRIMITIVE_FIELDS = (*_REQUIRED_RQ, "Priority", "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID")


def decode_store_request(command: bytes) -> dict[str, int | str] | None:
    """The fields of a C-STORE-RQ command set that announces a data set, or None for anything else.

    Anything unexpected (another command, an element outside the C-STORE-RQ set, a malformed
    length, non-ASCII text) returns None, and pynetdicom decodes the message instead.
    """
    fields: dict[str, int | str] = {}
    pos, end = 0, len(command)
    while pos < end:
        if end - pos < 8:
            return None
        group, element, length = struct.unpack_from("<HHI", command, pos)
        pos += 8
        spec = _STORE_RQ.get(element) if group == 0 else None
        if spec is None or end - pos < length:
            return None
        name, kind = spec
        value = command[pos : pos + length]
        pos += length
        if kind in ("US", "UL"):
            if length != (2 if kind == "US" else 4):
                return None
            fields[name] = struct.unpack("<H" if kind == "US" else "<I", value)[0]
            continue
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            return None
        fields[name] = text.rstrip("\0 ") if kind == "UI" else text.strip(" ")
    if fields.get("CommandField") != _C_STORE_RQ or fields.get("CommandDataSetType", _NO_DATA_SET) == _NO_DATA_SET:
        return None
    if any(name not in fields for name in _REQUIRED_RQ):
        return None
    return fields


def store_request_primitive(context_id: int, fields: dict[str, int | str], data_set: bytes) -> Any:
    """The C-STORE request primitive pynetdicom's ``message_to_primitive`` would build from these fields."""
    from io import BytesIO

    from pynetdicom.dimse_primitives import C_STORE

    rq = C_STORE()
    for name in _PRIMITIVE_FIELDS:
        if name in fields:
            setattr(rq, name, fields[name])
    rq.DataSet = BytesIO(data_set)
    rq._context_id = context_id
    rq._dataset_path = None
    rq._dataset_file = None
    return rq


def p_data_tf_bytes(context_id: int, value: bytes) -> bytes:
    """A P-DATA-TF PDU with one presentation data value (PS3.8 9.3.5), as pynetdicom encodes it."""
    item = struct.pack(">IB", len(value) + 1, context_id) + value
    return struct.pack(">BBI", 0x04, 0x00, len(item)) + item


def split_pdvs(body: memoryview) -> list[tuple[int, memoryview]] | None:
    """The presentation data values of a P-DATA-TF PDU's body (after its 6-byte header), as views into it.

    ``(context id, message control header + fragment)`` per item, as pynetdicom's decoder gives
    them but without copying. None when an item is not well formed (pynetdicom then decodes it and
    treats it as it would).
    """
    pdvs: list[tuple[int, memoryview]] = []
    offset, end = 0, len(body)
    while offset < end:
        if end - offset < 6:
            return None
        (length,) = _U32_BE.unpack_from(body, offset)
        if length < 2 or offset + 4 + length > end:  # at least a context id and a control header
            return None
        pdvs.append((body[offset + 4], body[offset + 5 : offset + 4 + length]))
        offset += 4 + length
    return pdvs or None


_U32_BE = struct.Struct(">I")
