"""``mmclinic demo``: the main job on the embedded defaults (sample cohort, SQLite, bundled weights)."""

from __future__ import annotations

from pathlib import Path

import typer

from mmclinic.cli import app


@app.command("demo")
def demo(
    manifest: Path = typer.Option(
        Path("sample_data/cohort/manifest.csv"), help="Cohort manifest (generated with `synth` when missing)."
    ),
    out_dir: Path = typer.Option(Path("var/demo"), help="Where the results table and metrics are written."),
) -> None:
    """List plugins, summarise the cohort, score it into the store and evaluate against the ground truth."""
    from rich.console import Console

    from mmclinic.config import get_settings
    from mmclinic.demo import DemoPaths, check_manifest, run_demo

    check_manifest(manifest)
    code = run_demo(get_settings(), DemoPaths(manifest, out_dir), Console(width=150))
    raise typer.Exit(code)
