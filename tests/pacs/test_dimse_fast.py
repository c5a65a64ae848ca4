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

    from mmclinic.pacs.acceptor import part10

    req = C_STORE()
    req.MessageID = 3
    req.AffectedSOPClassUID = CT
    req.AffectedSOPInstanceUID = sop_uid
    req.DataSet = io.BytesIO(b"\x08\x00\x18\x00" + b"\x00" * 60)
    context = build_context(CT, [syntax])
    context.context_id = 1
    event = Event(None, evt.EVT_C_STORE, {"request": req, "context": context.as_tuple})  # type: ignore[arg-type]
    assert part10(event) == event.encoded_dataset(include_meta=True)


def _assoc() -> object:
    """A real (never connected) acceptor association: what a DIMSE provider uses while receiving."""
    from pynetdicom import AE
    from pynetdicom.association import Association

    return Association(AE(), "acceptor")


def _store_request(data: bytes, move: bool) -> C_STORE:
    import io

    rq = C_STORE()
    rq.MessageID = 41
    rq.AffectedSOPClassUID = CT
    rq.AffectedSOPInstanceUID = "1.2.826.0.1.3680043.8.498.77"
    rq.Priority = 1
    if move:
        rq.MoveOriginatorApplicationEntityTitle = "ORTHANC"
        rq.MoveOriginatorMessageID = 9
    rq.DataSet = io.BytesIO(data)
    return rq


def _pdatas(primitive: object, max_pdu: int) -> list[object]:
    from pynetdicom.dimse_messages import C_STORE_RQ

    msg = C_STORE_RQ()
    msg.primitive_to_message(primitive)  # type: ignore[arg-type]
    return list(msg.encode_msg(1, max_pdu))


def _received(provider_cls: type, pdatas: list[object]) -> tuple[object, object]:
    provider = provider_cls(_assoc())
    for p in pdatas:
        provider.receive_primitive(p)
    return provider.msg_queue.get_nowait()


@pytest.mark.parametrize("move", [False, True])
@pytest.mark.parametrize("max_pdu", [0, 4096])  # one fragment, or the data set in many P-DATA
def test_store_request_short_path_gives_pynetdicoms_primitive(move: bool, max_pdu: int) -> None:
    from pynetdicom.dimse import DIMSEServiceProvider

    from mmclinic.pacs.acceptor import prompt_dimse_class

    data = bytes(range(256)) * 50
    pdatas = _pdatas(_store_request(data, move), max_pdu)
    ours_cx, ours = _received(prompt_dimse_class(), pdatas)
    ref_cx, ref = _received(DIMSEServiceProvider, pdatas)
    assert ours_cx == ref_cx == 1
    for name in (
        "MessageID", "AffectedSOPClassUID", "AffectedSOPInstanceUID", "Priority",
        "MoveOriginatorApplicationEntityTitle", "MoveOriginatorMessageID", "_context_id",
    ):  # fmt: skip
        assert getattr(ours, name) == getattr(ref, name), name
    assert ours.DataSet.getvalue() == ref.DataSet.getvalue() == data  # type: ignore[attr-defined]


def test_other_messages_and_broken_fragments_take_pynetdicoms_path() -> None:
    from pynetdicom.dimse_messages import C_ECHO_RQ
    from pynetdicom.dimse_primitives import C_ECHO
    from pynetdicom.pdu_primitives import P_DATA

    from mmclinic.pacs.acceptor import prompt_dimse_class

    echo = C_ECHO()
    echo.MessageID = 3
    echo.AffectedSOPClassUID = "1.2.840.10008.1.1"
    msg = C_ECHO_RQ()
    msg.primitive_to_message(echo)
    _, got = _received(prompt_dimse_class(), list(msg.encode_msg(1, 0)))
    assert isinstance(got, C_ECHO) and got.MessageID == 3
    # A command fragment in the middle of a data set is an invalid PDU: the association is aborted.
    command, *data = _pdatas(_store_request(b"\x00" * 10000, False), 4096)
    provider = prompt_dimse_class()(_assoc())
    provider.receive_primitive(command)
    provider.receive_primitive(data[0])
    stray = P_DATA()
    stray.presentation_data_value_list.append((1, b"\x03" + b"\x00" * 8))
    provider.receive_primitive(stray)
    assert provider.dul.event_queue.get_nowait() == "Evt19"
    assert provider.msg_queue.empty()


def test_a_message_that_begins_in_the_same_p_data_is_not_lost() -> None:
    from pynetdicom.pdu_primitives import P_DATA

    from mmclinic.pacs.acceptor import prompt_dimse_class

    first = _pdatas(_store_request(b"\x01" * 6000, False), 4096)
    second = _pdatas(_store_request(b"\x02" * 100, True), 0)
    joined = P_DATA()  # the end of the first data set and the whole second message in one P-DATA
    for p in (first[-1], *second):
        joined.presentation_data_value_list.extend(p.presentation_data_value_list)  # type: ignore[attr-defined]
    provider = prompt_dimse_class()(_assoc())
    for p in (*first[:-1], joined):
        provider.receive_primitive(p)
    got = [provider.msg_queue.get_nowait()[1] for _ in range(2)]
    assert [g.DataSet.getvalue() for g in got] == [b"\x01" * 6000, b"\x02" * 100]  # type: ignore[attr-defined]
    assert got[1].MoveOriginatorApplicationEntityTitle == "ORTHANC"  # type: ignore[attr-defined]


def _pdata_body(items: list[tuple[int, bytes]]) -> bytes:
    return b"".join((len(value) + 1).to_bytes(4, "big") + bytes([cx]) + value for cx, value in items)


def test_split_pdvs_gives_pynetdicoms_items_as_views() -> None:
    import random

    from pynetdicom.pdu import P_DATA_TF

    from mmclinic.pacs.dimse_fast import split_pdvs

    rng = random.Random(7)
    for _ in range(50):
        items = [
            (rng.randrange(1, 256, 2), bytes([rng.randrange(4)]) + rng.randbytes(rng.randrange(0, 3000)))
            for _ in range(rng.randrange(1, 4))
        ]
        body = _pdata_body(items)
        theirs = P_DATA_TF()
        theirs.decode(b"\x04\x00" + len(body).to_bytes(4, "big") + body)
        ours = split_pdvs(memoryview(body))
        assert ours is not None
        assert [(cx, bytes(v)) for cx, v in ours] == [
            (i.presentation_context_id, i.presentation_data_value) for i in theirs.presentation_data_value_items
        ]


def test_split_pdvs_declines_items_that_are_not_well_formed() -> None:
    from mmclinic.pacs.dimse_fast import split_pdvs

    good = _pdata_body([(1, b"\x02abc")])
    for body in (
        b"",  # no item at all
        good[:-1],  # the item runs past the PDU
        good + b"\x00\x00",  # a stray partial item header
        (1).to_bytes(4, "big") + b"\x01",  # an item without a message control header
    ):
        assert split_pdvs(memoryview(body)) is None


def test_p_data_tf_bytes_equal_pynetdicoms_encoding() -> None:
    from pynetdicom.pdu import P_DATA_TF
    from pynetdicom.pdu_primitives import P_DATA

    from mmclinic.pacs.dimse_fast import p_data_tf_bytes

    for context_id, value in ((1, b"\x03" + bytes(range(40))), (255, b"\x02"), (7, b"\x03" + b"x" * 70_000)):
        primitive = P_DATA()
        primitive.presentation_data_value_list.append((context_id, value))
        assert p_data_tf_bytes(context_id, value) == P_DATA_TF(primitive).encode()
