"""The ``mmclinic`` command line: thin Typer commands, each calling one library function."""

from __future__ import annotations

import importlib
import sys

import typer

from mmclinic.errors import MmclinicError

app = typer.Typer(
    name="mmclinic",
    help="Multimodal CT + notes + records tumor detection and malignancy risk.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# Each module registers its commands on ``app`` at import (kept in one list so that the
# command set is explicit; modules import heavy dependencies inside the command bodies).
_COMMAND_MODULES = [
    "mmclinic.cli.plugins",
    "mmclinic.cli.demo",
    "mmclinic.cli.inspect",
    "mmclinic.cli.model",
    "mmclinic.cli.synth",
    "mmclinic.cli.server",
    "mmclinic.cli.pacs",
    "mmclinic.cli.score",
]

for _mod in _COMMAND_MODULES:
    importlib.import_module(_mod)


def main() -> None:
    """Console entry point: library errors become one line on stderr and exit code 2."""
    from mmclinic.logs import setup_logging

    setup_logging()
    try:
        app()
    except MmclinicError as exc:
        typer.echo(f"error: {exc.reason}: {exc.detail}" if exc.detail else f"error: {exc.reason}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
