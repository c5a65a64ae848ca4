"""pynetdicom Storage SCP: C-ECHO + C-STORE for CT, an AE-title/host allow-list, optional TLS, audit of rejects."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import queue
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from mmclinic.config import PacsPeer, PacsSettings
from mmclinic.errors import ConfigError
from mmclinic.logs import event
from mmclinic.pacs.dimse_fast import (
    decode_store_request,
    part10_header,
    store_request_primitive,
    store_response_bytes,
)
from mmclinic.pacs.receive import ACCEPTED_SOP_CLASSES, Receiver, listener_actor
from mmclinic.store.audit import record
from mmclinic.store.db import transaction

log = logging.getLogger(__name__)

# Transfer syntaxes accepted for CT: uncompressed, JPEG baseline/lossless, JPEG-LS, JPEG 2000, RLE.
TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.5",  # RLE Lossless
)
VERIFICATION = "1.2.840.10008.1.1"
# A-ASSOCIATE-RJ: result 1 (permanent), source 1 (service user), diagnostics per PS3.8 Table 9-21.
_REJECT_CALLING, _REJECT_CALLED = 0x03, 0x07


def _resolve(host: str) -> set[str]:
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
    except OSError as exc:
        raise ConfigError("config.pacs_peer_host", f"allowed peer host {host!r} cannot be resolved") from exc


def _plain_address(host: str) -> str:
    """An IPv4-mapped IPv6 address (``::ffff:10.0.0.5``, how a dual-stack socket reports IPv4 peers) as IPv4."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    mapped = getattr(addr, "ipv4_mapped", None)
    return str(mapped) if mapped is not None else str(addr)


@dataclass
class AccessGate:
    """Decides whether an association may proceed: calling AE on the list, from its host, to our AE title.

    Each allowed (AE title, address) pair has its own site, so one AE title configured for two hosts
    of two sites files each host's studies under its own site.
    """

    ae_title: str
    peers: list[PacsPeer]
    on_reject: Callable[[str, str, str], None] | None = None
    _sites: dict[tuple[str, str], str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for p in self.peers:
            for address in _resolve(p.host):
                key = (p.ae_title.strip(), _plain_address(address))
                if self._sites.setdefault(key, p.site) != p.site:
                    raise ConfigError(
                        "config.pacs_peer_ambiguous", f"peer {key[0]!r} from {p.host!r} is listed for two sites"
                    )

    def check(self, calling: str, called: str, host: str) -> tuple[str | None, str]:
        """``(site, "ok")`` when allowed, else ``(None, reason code)``."""
        if called.strip() != self.ae_title.strip():
            return None, "pacs.called_ae_unknown"
        calling = calling.strip()
        site = self._sites.get((calling, _plain_address(host)))
        if site is not None:
            return site, "ok"
        if any(ae == calling for ae, _ in self._sites):
            return None, "pacs.peer_host_mismatch"
        return None, "pacs.calling_ae_unknown"


def _gated_acse_class(gate: AccessGate) -> type[Any]:
    from pynetdicom import evt
    from pynetdicom.acse import ACSE

    class GatedACSE(ACSE):
        """ACSE that applies the allow-list (AE title *and* host) before the normal negotiation.

        pynetdicom only knows AE-title lists; the host check needs the requestor's address, which
        exists only inside the association, hence this subclass.
        """

        def _negotiate_as_acceptor(self) -> None:
            rq = self.requestor.primitive
            assert rq is not None  # negotiation starts only after an A-ASSOCIATE-RQ arrived
            calling, called = str(rq.calling_ae_title), str(rq.called_ae_title)
            host = str(self.assoc.requestor.address)
            site, reason = gate.check(calling, called, host)
            if site is None:
                if gate.on_reject is not None:  # audited before the peer hears of it
                    gate.on_reject(calling, host, reason)
                diag = _REJECT_CALLED if reason == "pacs.called_ae_unknown" else _REJECT_CALLING
                self.send_reject(0x01, 0x01, diag)
                evt.trigger(self.assoc, evt.EVT_REJECTED, {})
                self.assoc.kill()
                return
            self.assoc.mmclinic_site = site  # type: ignore[attr-defined]  # read by the C-STORE handler
            super()._negotiate_as_acceptor()

    return GatedACSE


def tls_context(settings: PacsSettings) -> ssl.SSLContext | None:
    """Server TLS context from the configured certificate/key; a CA makes client certificates mandatory."""
    if settings.tls_cert is None and settings.tls_key is None:
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise ConfigError("config.pacs_tls", "tls_cert and tls_key must both be set")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
        if settings.tls_ca is not None:
            ctx.load_verify_locations(cafile=str(settings.tls_ca))
            ctx.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("config.pacs_tls", f"TLS files cannot be loaded ({type(exc).__name__})") from exc
    return ctx


# pynetdicom's acceptor polls, and each poll interval is latency added to every C-STORE.
# - Its DUL thread (socket + outgoing queue) sleeps 1 ms whenever a loop found nothing to do, so a
#   response waits up to 1 ms before it is sent, and polling faster would take the GIL from the
#   handler many times a millisecond. Here that pause is a wait on the socket and on a wake-up
#   channel that ``send_pdu`` signals: the DUL runs the moment the peer sends or a response is
#   queued, and sleeps otherwise. The wait is bounded, so kills and expired timers are still seen.
# - Its association thread sleeps 1 ms per loop and then only peeks at the queue of decoded
#   messages. Waiting on that queue instead hands a message over the moment it is complete and
#   burns no CPU; the wait is bounded so the loop still checks release, abort and timeouts. The
#   longer the wait, the rarer a message lands in the fixed 1 ms sleep between two waits; it ends
#   early when the DUL queued a release or abort for the association, so those are not delayed.
# - Its socket reads a PDU 4 KiB per call into a growing buffer (about 25 calls for a 100 KiB
#   PDU); here it reads into one buffer of the PDU's size, as much per call as has arrived.
_DUL_MAX_WAIT_S = 0.01
_DUL_FALLBACK_SLEEP_S = 0.001  # pynetdicom's own pause, where there is nothing to wait on
_MSG_WAIT_S = 0.02
_MSG_SLICE_S = 0.001


def _prompt_dimse_class() -> type[Any]:
    from pynetdicom.dimse import DIMSEServiceProvider
    from pynetdicom.pdu_primitives import P_DATA

    class PromptDIMSE(DIMSEServiceProvider):
        """DIMSE provider for the listener: ``get_msg`` waits briefly for the next message (see above),
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
        _fast: tuple[int, dict[str, int | str], list[bytes]] | None = None

        def receive_primitive(self, primitive: Any) -> None:
            # A C-STORE-RQ whose command arrives whole in its first PDV is decoded here (see
            # dimse_fast), its data fragments joined once at the end; anything else, and any message
            # pynetdicom has already begun, is pynetdicom's. EVT_DIMSE_RECV is not triggered for the
            # short path; this listener binds no handler to it.
            pdvs = list(primitive.presentation_data_value_list)
            if self._fast is None:
                if self.message is not None or not pdvs or pdvs[0][1][0] & 3 != 3:
                    super().receive_primitive(primitive)
                    return
                fields = decode_store_request(bytes(pdvs[0][1][1:]))
                if fields is None:
                    super().receive_primitive(primitive)
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
                chunks.append(bytes(data[1:]))
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
            pdata = P_DATA()
            pdata.presentation_data_value_list.append((context_id, b"\x03" + command))  # last command fragment
            self.dul.send_pdu(pdata)

    return PromptDIMSE


def _waking_dul_class() -> type[Any]:
    from pynetdicom.dul import DULServiceProvider

    class WakingDUL(DULServiceProvider):
        """DUL provider that waits on its socket and a wake-up channel instead of sleeping (see above).

        pynetdicom's reactor loop stays as it is: it sleeps ``_run_loop_delay`` when idle, and on the
        DUL's own thread reading that value does the wait and yields 0. ``open_wakeup`` must be called
        before the thread starts; the channel is a socket pair (not raw fds), so a late wake-up after
        the thread ended fails harmlessly instead of writing to a reused descriptor.
        """

        _wake: tuple[socket.socket, socket.socket] | None = None

        def open_wakeup(self) -> None:
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


def _bulk_socket_class() -> type[Any]:
    from pynetdicom.transport import AssociationSocket

    class BulkReadSocket(AssociationSocket):
        """AssociationSocket whose ``recv`` fills one buffer of the requested size (see above)."""

        def recv(self, nr_bytes: int) -> bytearray:
            sock = self.socket
            assert sock is not None  # pynetdicom reads only from a connected socket
            buf = bytearray(nr_bytes)
            got = 0
            with memoryview(buf) as view:
                while got < nr_bytes:
                    n = sock.recv_into(view[got:], nr_bytes - got)
                    if not n:  # closed by the peer: what arrived, as pynetdicom returns it
                        break
                    got += n
            if got < nr_bytes:
                del buf[got:]
            return buf

    return BulkReadSocket


def _part10(ev: Any) -> bytes:
    """The received instance as a Part 10 file, as ``ev.encoded_dataset()`` gives it (see dimse_fast)."""
    req = ev.request
    uids = (req.AffectedSOPClassUID, req.AffectedSOPInstanceUID, ev.context.transfer_syntax)
    header = part10_header(*(str(u) for u in uids)) if all(uids) else None
    if header is None:
        return bytes(ev.encoded_dataset(include_meta=True))
    return header + bytes(req.DataSet.getvalue())


class StorageSCP:
    """The running listener. ``start()`` binds (port 0 picks a free port, see ``port``); ``stop()`` shuts it."""

    def __init__(self, settings: PacsSettings, receiver: Receiver, factory: sessionmaker[Session]) -> None:
        self.settings, self.receiver, self.factory = settings, receiver, factory
        self.gate = AccessGate(settings.ae_title, list(settings.allowed_peers), self._audit_reject)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def _audit_reject(self, calling: str, host: str, reason: str) -> None:
        event(log, "pacs.association_rejected", level=logging.WARNING, calling_ae=calling, host=host, reason=reason)
        try:
            with transaction(self.factory) as s:
                record(s, listener_actor("*", f"{calling}@{host}"), "pacs.association", f"ae/{calling[:16]}", reason)
        except Exception:
            log.exception("audit of a rejected association failed")

    def _handle_echo(self, event_: Any) -> int:
        return 0x0000

    def _handle_store(self, ev: Any) -> Any:
        from pydicom.dataset import Dataset

        site = getattr(ev.assoc, "mmclinic_site", None) or "default"
        client = f"{ev.assoc.requestor.ae_title}@{ev.assoc.requestor.address}"
        try:
            data = _part10(ev)
        except Exception:  # pynetdicom could not build file meta from the request
            data = b""
        result = self.receiver.store(
            data,
            site,
            client,
            context_sop_class=str(ev.context.abstract_syntax),
            request_sop_uid=str(ev.request.AffectedSOPInstanceUID or ""),
        )
        rsp = Dataset()
        rsp.Status = result.status
        if result.status:
            rsp.ErrorComment = result.reason[:64]
        return rsp

    def _build_ae(self) -> Any:
        from pynetdicom import AE, evt

        ae = AE(ae_title=self.settings.ae_title)
        ae.maximum_associations = self.settings.max_associations
        ae.maximum_pdu_size = self.settings.max_pdu_size
        # Bounded waits: a stalled peer must not hold an association slot for ever.
        ae.acse_timeout, ae.dimse_timeout, ae.network_timeout = 30, 60, 60
        for sop in ACCEPTED_SOP_CLASSES:
            ae.add_supported_context(sop, list(TRANSFER_SYNTAXES))
        ae.add_supported_context(VERIFICATION)
        self._handlers = [(evt.EVT_C_ECHO, self._handle_echo), (evt.EVT_C_STORE, self._handle_store)]
        return ae

    def start(self) -> None:
        """Bind and serve in a background thread."""
        from pynetdicom.transport import RequestHandler, ThreadedAssociationServer

        acse_cls, dimse_cls, dul_cls = _gated_acse_class(self.gate), _prompt_dimse_class(), _waking_dul_class()
        socket_cls = _bulk_socket_class()

        class Handler(RequestHandler):
            def _create_association(self) -> Any:
                assoc = super()._create_association()
                assoc.acse = acse_cls(assoc)
                # Not started yet, so nothing holds the old DIMSE provider. The DUL already holds the
                # socket and timers: it keeps its state and only gains the waiting behaviour above.
                assoc.dimse = dimse_cls(assoc)
                dul: Any = assoc.dul
                dul.__class__ = dul_cls
                dul.open_wakeup()
                dul.socket.__class__ = socket_cls
                return assoc

        class Server(ThreadedAssociationServer):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                kwargs["request_handler"] = Handler
                super().__init__(*args, **kwargs)

        try:
            self.receiver.warm_up()
        except Exception as exc:  # only a head start: the first C-STORE does the same work if this failed
            event(log, "pacs.warm_up_failed", level=logging.WARNING, error=type(exc).__name__)
        ae = self._build_ae()
        try:
            self._server = ae.make_server(
                (self.settings.host, self.settings.port),
                ae_title=self.settings.ae_title,
                ssl_context=tls_context(self.settings),
                evt_handlers=self._handlers,
                server_class=Server,
            )
        except OSError as exc:
            raise ConfigError(
                "config.pacs_bind", f"cannot listen on {self.settings.host}:{self.settings.port}"
            ) from exc
        self._ae = ae
        self._thread = threading.Thread(target=self._server.serve_forever, name="pacs-scp", daemon=True)
        self._thread.start()
        event(log, "pacs.listening", ae_title=self.settings.ae_title, host=self.settings.host, port=self.port)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop accepting, close the socket and wait for the serving thread."""
        if self._server is not None:
            # pynetdicom un-registers the server from an AE list it was never added to: ValueError.
            with contextlib.suppress(ValueError):
                self._server.shutdown()  # also closes the socket
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
