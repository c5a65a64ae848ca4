"""``mmclinic pacs listen|echo|outbox|export``: DICOM listener, connectivity check, result outbox."""

from __future__ import annotations

import logging
import signal
import threading
from typing import TYPE_CHECKING, Annotated

import typer

from mmclinic.cli import app

if TYPE_CHECKING:  # pragma: no cover
    from mmclinic.pacs.service import PacsService

pacs_app = typer.Typer(help="PACS integration: DICOM listener and results back to the PACS.", no_args_is_help=True)
app.add_typer(pacs_app, name="pacs")


def _service() -> PacsService:
    from mmclinic.config import get_settings
    from mmclinic.pacs.service import PacsService
    from mmclinic.store.db import create_db_engine, session_factory

    settings = get_settings()
    return PacsService(settings, session_factory(create_db_engine(settings.effective_database_url)))


@pacs_app.command("listen")
def listen(
    port: Annotated[int | None, typer.Option(help="Port (default: settings pacs.port).")] = None,
) -> None:
    """Run the Storage SCP, the study-complete trigger and the outbox until SIGTERM/SIGINT."""
    from mmclinic.config import get_settings

    settings = get_settings()
    # pynetdicom's INFO lines describe every DIMSE message; keep the service log to our own events.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    if port is not None:
        settings.pacs.port = port
    svc = _service()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    typer.echo(f"listening as {settings.pacs.ae_title} on {settings.pacs.host}:{settings.pacs.port}", err=True)
    svc.run(stop)


@pacs_app.command("echo")
def echo(
    host: str,
    port: int,
    called_ae: Annotated[str, typer.Option("--called-ae", help="AE title of the peer.")] = "ANY-SCP",
) -> None:
    """C-ECHO a peer (connectivity check); exit 1 when it does not answer Success."""
    from mmclinic.config import PacsDestination, get_settings
    from mmclinic.pacs.outbox import cecho

    ok, reason = cecho(PacsDestination(ae_title=called_ae, host=host, port=port), get_settings().pacs.ae_title)
    typer.echo(f"echo {called_ae}@{host}:{port}: {reason}")
    if not ok:
        raise typer.Exit(1)


@pacs_app.command("outbox")
def outbox(flush: Annotated[bool, typer.Option(help="Try to send every pending object now.")] = False) -> None:
    """List pending results (and optionally flush them)."""
    svc = _service()
    if flush:
        stats = svc.outbox.flush(now=float("inf"))
        typer.echo(f"sent {stats.sent}, failed attempts {stats.failed}")
    for name in svc.outbox.pending():
        st = svc.outbox.state(name)
        typer.echo(
            f"{name}\tattempts {st['attempts']}\tremaining {','.join(st['remaining'])}\t{st.get('last_error', '')}"
        )


@pacs_app.command("export")
def export(prediction_id: int) -> None:
    """Build a prediction's SR (and SEG if enabled) and put it in the outbox."""
    names = _service().export_prediction(prediction_id)
    if not names:
        from mmclinic.errors import NotFoundError

        raise NotFoundError("not_found.prediction", "no such prediction")
    typer.echo("\n".join(names))
