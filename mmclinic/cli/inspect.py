"""``mmclinic inspect``: per case, what each modality plugin made of it (bad cases listed, not fatal)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from mmclinic.cli import app


def _short(summary: dict[str, Any], limit: int = 400) -> str:
    text = json.dumps(summary, default=str, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


@app.command("inspect")
def inspect_cmd(
    target: Path = typer.Argument(..., help="A manifest (CSV/Parquet) or one DICOM study folder."),
    task: str = typer.Option("tumor-risk", help="Task whose schema and geometry validate the inputs."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per case instead of text."),
) -> None:
    """Print, per case, the series chosen and why, volume shape, note windows, tabular field status."""
    from mmclinic.inspect import cases_from_target, inspect_all, task_spec
    from mmclinic.registry import get_registry

    registry = get_registry()
    spec = task_spec(registry, task)
    reports = inspect_all(cases_from_target(target, spec.labels), registry, spec)
    console = Console(width=160, soft_wrap=True)
    for rep in reports:
        if as_json:
            typer.echo(json.dumps(asdict(rep), default=str))
            continue
        mark = "[green]OK[/green]" if rep.ok else "[red]BAD[/red]"
        console.print(f"{mark} case {rep.case_id}" + (f"  [red]{rep.error}[/red]" if rep.error else ""))
        for m in rep.modalities:
            line = f"    {m.modality:<8} {m.status:<9} {m.plugin}"
            if m.reason:
                line += f"  {m.reason}: {m.detail}"
            if m.summary:
                line += f"  {_short(m.summary)}"
            console.print(line, markup=False)
    bad = sum(not r.ok for r in reports)
    if not as_json:
        console.print(f"{len(reports)} cases, {len(reports) - bad} ok, {bad} with problems")
