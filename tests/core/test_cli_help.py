"""Every CLI command and subcommand answers --help."""

from __future__ import annotations

from typing import Any

import typer.main
from typer.testing import CliRunner

from mmclinic.cli import app


def _all_paths(cmd: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    commands = getattr(cmd, "commands", None)
    if isinstance(commands, dict):
        for name, sub in commands.items():
            paths.extend(_all_paths(sub, (*prefix, name)))
    return paths


def test_every_command_has_help() -> None:
    root = typer.main.get_command(app)
    paths = _all_paths(root)
    assert (("plugins", "list")) in paths
    runner = CliRunner()
    for path in paths:
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0, (path, result.output)
        assert "Usage" in result.output
