"""pynetdicom Storage SCP: C-ECHO + C-STORE for CT, an AE-title/host allow-list, optional TLS, audit of rejects."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from mmclinic.config import PacsPeer, PacsSettings
from mmclinic.errors import ConfigError
from mmclinic.logs import event
from mmclinic.pacs.acceptor import (
    bulk_socket_class,
    part10,
    prompt_dimse_class,
    unbind_debug_summaries,
    waking_dul_class,
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
            data = part10(ev)
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

        acse_cls, dimse_cls, dul_cls = _gated_acse_class(self.gate), prompt_dimse_class(), waking_dul_class()
        socket_cls = bulk_socket_class()

        class Handler(RequestHandler):
            def _create_association(self) -> Any:
                assoc = super()._create_association()
                unbind_debug_summaries(assoc)
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
