"""pynetdicom's acceptor with its hot path replaced: waiting instead of polling, bulk reads, C-STORE short paths.

Each piece subclasses a pynetdicom internal (hence ``pynetdicom>=3.0,<3.1`` in pyproject) and is
swapped into an association by ``StorageSCP`` before it starts. What each one replaces, and why:

pynetdicom's acceptor polls, and each poll interval is latency added to every C-STORE.
- Its DUL thread (socket + outgoing queue) sleeps 1 ms whenever a loop found nothing to do, so a
  response waits up to 1 ms before it is sent, and polling faster would take the GIL from the
  handler many times a millisecond. Here that pause is a wait on the socket and on a wake-up
  channel that ``send_pdu`` signals: the DUL runs the moment the peer sends or a response is
  queued, and sleeps otherwise. The wait is bounded, so kills and expired timers are still seen.
- Its association thread sleeps 1 ms per loop and then only peeks at the queue of decoded
  messages. Waiting on that queue instead hands a message over the moment it is complete and
  burns no CPU; the wait is bounded so the loop still checks release, abort and timeouts. The
  longer the wait, the rarer a message lands in the fixed 1 ms sleep between two waits; it ends
  early when the DUL queued a release or abort for the association, so those are not delayed.
- Each P-DATA-TF PDU goes from the socket through two copies, pynetdicom's PDU decoder, two event
  triggers, the event queue and the state machine before its data reaches the DIMSE provider:
  about 0.1 ms per PDU, several per CT slice. In the one state where that path can only hand the
  data on (Sta6, nothing queued ahead of it, no handler bound to those events, no TLS), the DUL
  here reads the PDU into one buffer and gives its values to the DIMSE provider as views into it.
  Any other PDU, and a P-DATA-TF whose items are not well formed, takes pynetdicom's path.
- pynetdicom's "standard" event handlers write a text summary of every PDU and DIMSE message to its
  DEBUG log, and build the text whether or not DEBUG is on. They are unbound unless that log is
  enabled (bound, they would also keep P-DATA on pynetdicom's path).
- Each response is queued for the DUL thread, which wakes and runs the state machine to send it.
  Under the same conditions (Sta6, nothing queued, no handler on those events, no TLS) the
  association thread sends a C-STORE response itself, under a lock the DUL's sends also take.
- Its socket reads a PDU 4 KiB per call into a growing buffer (about 25 calls for a 100 KiB
  PDU); here it reads into one buffer of the PDU's size, as much per call as has arrived.
- C-STORE requests are decoded, and their responses and the received instance's file meta are
  encoded, without pydicom's Dataset round trip (``dimse_fast``), byte for byte as pynetdicom does.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import ssl
import threading
import time
from typing import Any

from mmclinic.pacs.dimse_fast import (
    decode_store_request,
    p_data_tf_bytes,
    part10_header,
    split_pdvs,
    store_request_primitive,
    store_response_bytes,
)

log = logging.getLogger(__name__)

_DUL_MAX_WAIT_S = 0.01
_DUL_FALLBACK_SLEEP_S = 0.001  # pynetdicom's own pause, where there is nothing to wait on
_MSG_WAIT_S = 0.02
_MSG_SLICE_S = 0.001
_FIRST_BUFFER_MAX = 2 << 20  # above the default 1 MiB PDU limit: one allocation per PDU in practice


def prompt_dimse_class() -> type[Any]:
    from pynetdicom.dimse import DIMSEServiceProvider
    from pynetdicom.pdu_primitives import P_DATA

    class PromptDIMSE(DIMSEServiceProvider):
        """DIMSE provider for the listener: ``get_msg`` waits briefly for the next message (see the module docstring),
        and C-STORE requests and responses take the short path of ``dimse_fast``.

        Safe for this listener because its handlers never send requests on the association they
        serve (pynetdicom's ``send_*`` from an acceptor would compete with the reactor for messages).
        """

        def get_msg(self, block: bool = False) -> Any:
            if block:
                return super().get_msg(block=True)
            # Short slices: a release or abort request (queued for the association, not here) is
            # seen within one slice, while a waiting message is still handed over at once.
            deadline = time.monotonic() + _MSG_WAIT_S
            while True:
                try:
                    return self.msg_queue.get(timeout=_MSG_SLICE_S)
                except queue.Empty:
                    if not self.dul.to_user_queue.empty() or time.monotonic() >= deadline:
                        return None, None

        # A C-STORE-RQ in progress on the short path: (context id, command fields, data fragments).
        _fast: tuple[int, dict[str, int | str], list[bytes | memoryview]] | None = None

        def receive_primitive(self, primitive: Any) -> None:
            # A C-STORE-RQ whose command arrives whole in its first PDV is decoded here (see
            # dimse_fast), its data fragments joined once at the end; anything else, and any message
            # pynetdicom has already begun, is pynetdicom's. EVT_DIMSE_RECV is not triggered for the
            # short path; this listener binds no handler to it.
            pdvs = list(primitive.presentation_data_value_list)
            if self._fast is None:
                if self.message is not None or not pdvs or pdvs[0][1][0] & 3 != 3:
                    super().receive_primitive(_as_bytes(primitive))
                    return
                fields = decode_store_request(bytes(pdvs[0][1][1:]))
                if fields is None:
                    super().receive_primitive(_as_bytes(primitive))
                    return
                self._fast = (pdvs[0][0], fields, [])
                pdvs = pdvs[1:]
            while pdvs and self._fast is not None:
                (context_id, data), pdvs = pdvs[0], pdvs[1:]
                cx, fields, chunks = self._fast
                if data[0] & 1 or context_id != cx:  # a command, or another context, inside a data set
                    self._fast = None
                    self.dul.event_queue.put("Evt19")  # invalid PDU: pynetdicom aborts the association
                    return
                chunks.append(data[1:])  # a view when the DUL read the PDU itself: joined once below
                if data[0] & 2:  # last fragment of the data set
                    self._fast = None
                    try:
                        rq = store_request_primitive(cx, fields, b"".join(chunks))
                    except Exception:  # a value pynetdicom's primitive refuses: as pynetdicom treats it
                        log.warning("received an invalid C-STORE request")
                        self.dul.event_queue.put("Evt19")
                        return
                    self.msg_queue.put((cx, rq))
            if pdvs:  # the next message began in the same P-DATA
                rest = P_DATA()
                rest.presentation_data_value_list.extend(pdvs)
                self.receive_primitive(rest)

        def send_msg(self, primitive: Any, context_id: int) -> None:
            # C-STORE responses skip pynetdicom's pydicom round trip (see dimse_fast). pynetdicom's
            # EVT_DIMSE_SENT is not triggered for them; this listener binds no handler to it.
            command = store_response_bytes(primitive)
            limit = self.maximum_pdu_size
            if command is None or (limit and len(command) + 6 > limit):  # + PDV header: one fragment only
                super().send_msg(primitive, context_id)
                return
            fragment = b"\x03" + command  # the last (only) fragment of a command
            send_now = getattr(self.dul, "send_p_data_now", None)
            if send_now is not None and send_now(context_id, fragment):
                return
            pdata = P_DATA()
            pdata.presentation_data_value_list.append((context_id, fragment))
            self.dul.send_pdu(pdata)

    return PromptDIMSE


def waking_dul_class() -> type[Any]:
    from pynetdicom import evt
    from pynetdicom.dul import DULServiceProvider
    from pynetdicom.pdu_primitives import P_DATA

    # Events the direct P-DATA paths do not trigger: each is taken only while none has a handler.
    _DIRECT_PDATA_SKIPS = (evt.EVT_DATA_RECV, evt.EVT_PDU_RECV, evt.EVT_FSM_TRANSITION)
    _DIRECT_SEND_SKIPS = (evt.EVT_DATA_SENT, evt.EVT_PDU_SENT, evt.EVT_FSM_TRANSITION)

    class WakingDUL(DULServiceProvider):
        """DUL provider that waits on its socket and a wake-up channel instead of sleeping (see the module docstring).

        pynetdicom's reactor loop stays as it is: it sleeps ``_run_loop_delay`` when idle, and on the
        DUL's own thread reading that value does the wait and yields 0. ``open_wakeup`` must be called
        before the thread starts; the channel is a socket pair (not raw fds), so a late wake-up after
        the thread ended fails harmlessly instead of writing to a reused descriptor.
        """

        _wake: tuple[socket.socket, socket.socket] | None = None
        _send_lock: threading.Lock | None = None

        def open_wakeup(self) -> None:
            self._send_lock = threading.Lock()
            pair = socket.socketpair()
            for end in pair:
                end.setblocking(False)
            self._wake = (pair[0], pair[1])

        def _signal(self) -> None:
            wake = self._wake
            if wake is not None:
                # Full: a wake-up is pending anyway. Closed: the reactor has ended.
                with contextlib.suppress(OSError):
                    wake[1].send(b"\0")

        def send_pdu(self, primitive: Any) -> None:
            super().send_pdu(primitive)
            self._signal()

        def _send(self, pdu: Any) -> None:
            lock = self._send_lock
            if lock is None:
                super()._send(pdu)
                return
            with lock:  # never interleaved with a send_p_data_now of the association thread
                super()._send(pdu)

        def send_p_data_now(self, context_id: int, value: bytes) -> bool:
            """Send a one-value P-DATA-TF from the calling thread; False when it must go through the queue.

            pynetdicom queues every PDU for the DUL thread, which wakes, runs the state machine
            (Sta6 + Evt9: DT-1, back to Sta6) and sends: a thread hand-off and about 0.3 ms before
            each C-STORE response leaves. In Sta6 with nothing queued ahead, no handler bound to the
            events that path triggers and no TLS, sending here is the same bytes in the same order. The
            lock keeps the DUL's own sends (release, abort) from interleaving with it. Order with
            queued P-DATA holds because this listener has at most one response outstanding per
            association (it negotiates no asynchronous operations).
            """
            lock, transport = self._send_lock, self.socket
            if lock is None or transport is None or transport.socket is None or not transport._is_connected:
                return False
            if isinstance(transport.socket, ssl.SSLSocket):  # one TLS connection must not be used by two threads
                return False
            with lock:
                if self.state_machine.current_state != "Sta6" or not self.to_provider_queue.empty():
                    return False
                if any(self.assoc.get_handlers(e) for e in _DIRECT_SEND_SKIPS):
                    return False
                transport.send(p_data_tf_bytes(context_id, value))  # a failure queues Evt17, as pynetdicom's path
            return True

        def kill_dul(self) -> None:
            super().kill_dul()
            self._signal()

        @property
        def _run_loop_delay(self) -> float:
            if threading.current_thread() is not self or self._wake is None or not self._wait_for_work():
                return _DUL_FALLBACK_SLEEP_S
            return 0.0

        @_run_loop_delay.setter
        def _run_loop_delay(self, value: float) -> None:
            """pynetdicom assigns its fixed delay in ``__init__``; the getter decides instead."""

        def _wait_for_work(self) -> bool:
            """Block until the socket is readable, a PDU is queued to send, or the bound passes.

            False when there is no connected socket to wait on (the caller sleeps instead).
            """
            wake, transport = self._wake, self.socket
            if wake is None or transport is None or transport.socket is None or not transport._is_connected:
                return False
            sock = transport.socket
            if self._kill_thread or not self.to_provider_queue.empty():
                return True
            if isinstance(sock, ssl.SSLSocket) and sock.pending():  # decrypted bytes select cannot see
                return True
            try:
                ready, _, _ = select.select([sock, wake[0]], [], [], _DUL_MAX_WAIT_S)
            except (OSError, ValueError):  # closed meanwhile: the reactor's own checks notice
                return False
            if wake[0] in ready:
                with contextlib.suppress(OSError):
                    while wake[0].recv(4096):
                        pass
            return True

        def _read_pdu_data(self) -> None:
            # A P-DATA-TF in Sta6 is handed to the DIMSE provider here (see the module docstring).
            transport = self.socket
            sock = transport.socket if transport is not None else None
            if transport is None or sock is None or not self._may_deliver_directly(sock):
                super()._read_pdu_data()
                return
            try:
                head = sock.recv(6, socket.MSG_PEEK)
            except (OSError, ValueError):
                head = b""
            if len(head) < 6 or head[0] != 0x04:
                super()._read_pdu_data()  # not a P-DATA-TF, or its header is not all here: as pynetdicom reads it
                return
            size = 6 + int.from_bytes(head[2:6], "big")
            try:
                pdu = transport.recv(size)
            except (OSError, TimeoutError):
                pdu = bytearray()
            if len(pdu) != size:  # closed before the whole PDU arrived, as pynetdicom treats it
                log.warning("DICOM connection closed in the middle of a PDU")
                self.event_queue.put("Evt17")
                return
            pdvs = split_pdvs(memoryview(pdu)[6:])
            if pdvs is None:
                self._decode_like_pynetdicom(bytes(pdu))
                return
            data: Any = P_DATA()  # its values are views here; _as_bytes converts them before pynetdicom sees them
            data.presentation_data_value_list.extend(pdvs)  # as pynetdicom's to_primitive fills it
            try:  # what the state machine's DT-2 does, and how it treats a failure
                self.assoc.dimse.receive_primitive(data)
            except Exception:
                log.exception("received P-DATA could not be processed; the association ends")
                self.kill_dul()

        def _may_deliver_directly(self, sock: socket.socket) -> bool:
            if isinstance(sock, ssl.SSLSocket) or self.state_machine.current_state != "Sta6":
                return False
            if not (self.event_queue.empty() and self._recv_pdu.empty()):
                return False  # something is ahead of this PDU in pynetdicom's order
            return not any(self.assoc.get_handlers(e) for e in _DIRECT_PDATA_SKIPS)

        def _decode_like_pynetdicom(self, pdu: bytes) -> None:
            """The end of pynetdicom's ``_read_pdu_data``, for a P-DATA-TF already read here."""
            try:
                decoded, event_name = self._decode_pdu(bytearray(pdu))
            except Exception:
                log.warning("a received PDU could not be decoded")
                self.event_queue.put("Evt19")
                return
            self.event_queue.put(event_name)
            self._recv_pdu.put(decoded)

        def run(self) -> None:
            # ``run``, not ``run_reactor``: the thread's target was bound to pynetdicom's reactor
            # before the class was swapped, while ``run`` is looked up when the thread starts.
            try:
                super().run()
            finally:
                wake, self._wake = self._wake, None
                for end in wake or ():
                    end.close()

    return WakingDUL


def bulk_socket_class() -> type[Any]:
    from pynetdicom.transport import AssociationSocket

    class BulkReadSocket(AssociationSocket):
        """AssociationSocket whose ``recv`` fills one buffer of the requested size (see the module docstring)."""

        def recv(self, nr_bytes: int) -> bytearray:
            sock = self.socket
            assert sock is not None  # pynetdicom reads only from a connected socket
            # The length comes from the peer: allocate for what arrives, not for what it announces
            # (a PDU header claiming 4 GiB must not reserve 4 GiB). One allocation up to the cap.
            buf = bytearray(min(nr_bytes, _FIRST_BUFFER_MAX))
            got = 0
            while got < nr_bytes:
                if got == len(buf):
                    buf.extend(bytes(min(len(buf), nr_bytes - got)))  # doubling, bounded by the request
                with memoryview(buf) as view:
                    n = sock.recv_into(view[got:], len(buf) - got)
                if not n:  # closed by the peer: what arrived, as pynetdicom returns it
                    break
                got += n
            if got < len(buf):
                del buf[got:]
            return buf

    return BulkReadSocket


def _as_bytes(primitive: Any) -> Any:
    """A P-DATA primitive whose values are bytes, as pynetdicom's own decoder gives them (it may keep them)."""
    if all(isinstance(data, bytes) for _, data in primitive.presentation_data_value_list):
        return primitive
    copy = type(primitive)()
    copy.presentation_data_value_list.extend((cx, bytes(data)) for cx, data in primitive.presentation_data_value_list)
    return copy


def unbind_debug_summaries(assoc: Any) -> None:
    """Unbind pynetdicom's PDU/DIMSE text summaries from ``assoc`` unless its DEBUG log is on (module docstring)."""
    if logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG):
        return
    from pynetdicom import _handlers, evt

    for event, handler in (
        (evt.EVT_PDU_RECV, _handlers.standard_pdu_recv_handler),
        (evt.EVT_PDU_SENT, _handlers.standard_pdu_sent_handler),
        (evt.EVT_DIMSE_RECV, _handlers.standard_dimse_recv_handler),
        (evt.EVT_DIMSE_SENT, _handlers.standard_dimse_sent_handler),
    ):
        assoc.unbind(event, handler)


def part10(ev: Any) -> bytes:
    """The received instance as a Part 10 file, as ``ev.encoded_dataset()`` gives it (see dimse_fast)."""
    req = ev.request
    uids = (req.AffectedSOPClassUID, req.AffectedSOPInstanceUID, ev.context.transfer_syntax)
    header = part10_header(*(str(u) for u in uids)) if all(uids) else None
    if header is None:
        return bytes(ev.encoded_dataset(include_meta=True))
    return header + bytes(req.DataSet.getvalue())
