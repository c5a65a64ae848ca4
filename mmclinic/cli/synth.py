"""``mmclinic synth``: write a synthetic cohort (DICOM CT + notes + records + manifest + ground truth)."""

from __future__ import annotations

from pathlib import Path

import typer

from mmclinic.cli import app


@app.command("synth")
def synth(
    out: Path = typer.Option(
        ..., "--out", help="Output folder (manifest.csv, records.csv, cases/, ground_truth.json)."
    ),
    cases: int = typer.Option(24, "--cases", help="Number of cases (studies)."),
    seed: int = typer.Option(0, "--seed", help="Seed: same seed and options give byte-identical files."),
    sites: int = typer.Option(2, "--sites", help="Number of sites patients are spread over."),
    rows: int = typer.Option(64, "--rows"),
    cols: int = typer.Option(64, "--cols"),
    slices: int = typer.Option(32, "--slices"),
    pixel_spacing: float = typer.Option(5.0, "--pixel-spacing", help="In-plane pixel spacing (mm)."),
    slice_thickness: float = typer.Option(5.0, "--slice-thickness", help="Slice thickness = spacing (mm)."),
    workers: int = typer.Option(1, "--workers", help="Worker processes (output does not depend on it)."),
    metadata_only: bool = typer.Option(
        False, "--metadata-only", help="Sample the latent model and write ground_truth.json only (no pixels, no text)."
    ),
) -> None:
    """Generate a synthetic cohort and print its Bayes-optimal and per-modality oracle AUROCs."""
    from rich.progress import Progress

    from mmclinic.synth import SynthSettings, generate_cohort

    settings = SynthSettings(
        cases=cases,
        seed=seed,
        sites=sites,
        rows=rows,
        cols=cols,
        slices=slices,
        pixel_spacing=pixel_spacing,
        slice_thickness=slice_thickness,
    )
    settings.validate()
    with Progress(transient=True) as bar:
        task = bar.add_task("writing cases", total=cases)
        result = generate_cohort(
            settings,
            out,
            workers=workers,
            metadata_only=metadata_only,
            progress=lambda done, total: bar.update(task, completed=done),
        )
    s = result.plan.summary
    oracle = ", ".join(f"{k} {v:.3f}" for k, v in s["oracle_auroc"].items())
    typer.echo(f"wrote {cases} cases ({s['patients']} patients, {s['followup_cases']} follow-ups) to {out}")
    typer.echo(f"prevalence malignant {s['prevalence']:.3f}, tumor present {s['tumor_rate']:.3f}")
    typer.echo(
        f"bayes-optimal AUROC {s['bayes_observed_auroc']:.3f} (with the unrecorded CEA values "
        f"{s['bayes_auroc']:.3f}); single-modality oracle AUROC: {oracle}"
    )
    rate = result.slices_written / result.seconds if result.seconds > 0 else 0.0
    typer.echo(f"{result.seconds:.1f} s, {result.slices_written} slices ({rate:.0f} slices/s, {workers} worker(s))")
