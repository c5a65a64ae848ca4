"""The hand-written C-STORE-RSP command set is byte-identical to pynetdicom's, and declines what it does not write."""

from __future__ import annotations

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE

from mmclinic.pacs.dimse_fast import store_response_bytes

CT = "1.2.840.10008.5.1.4.1.1.2"  # 25 characters: padded
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"


def _rsp(status: int, sop_class: str, sop_uid: str, message_id: int, comment: str | None = None) -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop_uid
    rsp.Status = status
    if comment is not None:
        rsp.ErrorComment = comment
    return rsp


def _pynetdicom_bytes(rsp: C_STORE) -> bytes:
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    [pdata] = list(msg.encode_msg(1, 0))
    [(_, pdv)] = pdata.presentation_data_value_list
    assert pdv[:1] == b"\x03"  # last fragment of a command
    return bytes(pdv[1:])


@pytest.mark.parametrize(
    ("status", "sop_class", "sop_uid", "message_id", "comment"),
    [
        (0x0000, CT, "1.2.826.0.1.3680043.8.498.1", 1, None),  # odd-length instance UID
        (0x0000, ENHANCED_CT, "1.2.826.0.1.3680043.8.498.12", 65535, None),  # even
        (0xC001, CT, "1.2.3.4", 7, "pacs.instance_conflict"),  # even comment
        (0xA700, CT, "1.2.3.45", 300, "resource.disk_full"),
        (0xC002, CT, "1.2.3.4", 2, "pacs.store_failed"),  # odd comment: space-padded
    ],
)
def test_bytes_equal_pynetdicoms_encoding(
    status: int, sop_class: str, sop_uid: str, message_id: int, comment: str | None
) -> None:
    rsp = _rsp(status, sop_class, sop_uid, message_id, comment)
    assert store_response_bytes(rsp) == _pynetdicom_bytes(rsp)


def test_declines_what_it_does_not_write() -> None:
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = CT
    request.AffectedSOPInstanceUID = "1.2.3"
    assert store_response_bytes(request) is None  # a request, not a response
    offending = _rsp(0xA900, CT, "1.2.3", 1)
    offending.OffendingElement = [0x00080018]
    assert store_response_bytes(offending) is None
    assert store_response_bytes(_rsp(0xC000, CT, "1.2.3", 1, "ungültig")) is None  # not ASCII
    assert store_response_bytes(object()) is None


@pytest.mark.parametrize(
    ("sop_uid", "syntax"),
    [("1.2.826.0.1.3680043.8.498.1", "1.2.840.10008.1.2.1"), ("1.2.826.0.1.3680043.8.498.12", "1.2.840.10008.1.2")],
)
def test_part10_bytes_equal_pynetdicoms_encoded_dataset(sop_uid: str, syntax: str) -> None:
    # The stored file's SHA-256 decides whether a resent instance is "the same": the bytes must not change.
    import io

    from pynetdicom import evt
    from pynetdicom.events import Event
    from pynetdicom.presentation import build_context

    from mmclinic.pacs.listener import _part10

    req = C_STORE()
    req.MessageID = 3
    req.AffectedSOPClassUID = CT
    req.AffectedSOPInstanceUID = sop_uid
    req.DataSet = io.BytesIO(b"\x08\x00\x18\x00" + b"\x00" * 60)
    context = build_context(CT, [syntax])
    context.context_id = 1
    event = Event(None, evt.EVT_C_STORE, {"request": req, "context": context.as_tuple})  # type: ignore[arg-type]
    assert _part10(event) == event.encoded_dataset(include_meta=True)
