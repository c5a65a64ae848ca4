"""``mmclinic plugins``: list installed plugins and their validation status."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.table import Table

from mmclinic.cli import app

if TYPE_CHECKING:  # pragma: no cover
    from mmclinic.registry import Registry

plugins_app = typer.Typer(help="Installed plugins.", no_args_is_help=True)
app.add_typer(plugins_app, name="plugins")


@plugins_app.command("list")
def list_plugins() -> None:
    """Print every plugin found through entry points: kind, name, version, distribution, status."""
    from mmclinic.registry import get_registry

    reg = get_registry()
    Console(width=200).print(plugins_table(reg))
    if not reg.records:
        typer.echo("no plugins installed")


def plugins_table(reg: Registry) -> Table:
    """The plugin table: kind, name, version, distribution, status (with the reason when broken)."""
    table = Table(title="mmclinic plugins")
    for col in ("kind", "name", "version", "distribution", "status"):
        table.add_column(col)
    for rec in reg.records:
        status = "ok" if rec.status == "ok" else f"error ({rec.reason})"
        table.add_row(rec.kind, rec.name, rec.version, rec.distribution, status)
    return table
