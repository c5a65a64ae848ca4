"""``mmclinic score``: score a cohort manifest into a Parquet/CSV table (resumable; local or Ray engine)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from mmclinic.cli import app


@app.command("score")
def score(
    manifest: Annotated[Path, typer.Argument(help="Cohort manifest (.csv or .parquet), labels optional.")],
    out: Annotated[Path, typer.Option("--out", help="Results table: .parquet or .csv (chosen by extension).")],
    db: Annotated[str | None, typer.Option("--db", help="Also store predictions in this database URL.")] = None,
    engine: Annotated[str, typer.Option("--engine", help="local | ray")] = "local",
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="Ray cluster address (default: a local Ray instance).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Prefetch threads (local) or model actors (ray).")
    ] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Cases per model batch.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto | cpu | cuda")] = "auto",
    model: Annotated[
        str | None, typer.Option("--model", help="Task plugin name or training-run folder (default: settings).")
    ] = None,
    records: Annotated[
        Path | None, typer.Option("--records", help="Tabular records file (default: records.csv beside the manifest).")
    ] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")] = True,
) -> None:
    """Score every case of MANIFEST; rerun the same command to resume an interrupted run."""
    from mmclinic.batch import ScoreOptions, score_cohort
    from mmclinic.config import get_settings

    settings = get_settings()
    summary = score_cohort(
        ScoreOptions(
            manifest=manifest,
            out=out,
            model=model or settings.model,
            device=device,
            engine=engine,  # type: ignore[arg-type]  # validated by score_cohort
            workers=workers or settings.batch.workers,
            batch_size=batch_size or settings.batch.batch_size,
            db_url=db,
            ray_address=ray_address,
            records=records,
            progress=progress and sys.stderr.isatty(),
        )
    )
    for line in summary.lines():
        typer.echo(line)
