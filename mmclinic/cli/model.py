"""``mmclinic train`` and ``mmclinic evaluate``: thin wrappers over mmclinic.training."""

from __future__ import annotations

from pathlib import Path

import typer

from mmclinic.cli import app


@app.command("train")
def train_cmd(
    manifest: Path = typer.Option(..., "--manifest", help="Cohort manifest (CSV/Parquet) with labels."),
    out: Path = typer.Option(..., "--out", help="Run folder: model.pt, best.pt, last.pt, cache/, train_summary.json."),
    task: str = typer.Option("tumor-risk", "--task", help="Task plugin name."),
    modalities: str = typer.Option("", "--modalities", help="Comma-separated subset (e.g. 'tabular'); default all."),
    epochs: int = typer.Option(30, "--epochs"),
    batch_size: int = typer.Option(16, "--batch-size"),
    lr: float = typer.Option(1e-3, "--lr"),
    d_model: int = typer.Option(64, "--d-model"),
    layers: int = typer.Option(2, "--layers"),
    late_fusion: bool = typer.Option(
        False, "--late-fusion/--no-late-fusion", help="Add each modality's own pooled logit to the fused logit."
    ),
    assertion_weight: float = typer.Option(
        0.0,
        "--assertion-weight",
        help="Weight of the notes assertion head (state / hedge / negate / omit per annotated finding; 0: off).",
    ),
    assertion_warmup: int = typer.Option(
        0, "--assertion-warmup", help="First epochs train the assertion head alone (no case labels)."
    ),
    patience: int = typer.Option(6, "--patience", help="Early stopping: epochs without validation AUROC gain."),
    val_fraction: float = typer.Option(0.2, "--val-fraction", help="Share of patients held out for validation."),
    seed: int = typer.Option(0, "--seed"),
    max_minutes: float = typer.Option(0.0, "--max-minutes", help="Stop after the epoch that passes this (0: none)."),
    freeze_after: int = typer.Option(
        0,
        "--freeze-after",
        help="Two-phase schedule: end-to-end epochs before the imaging encoder is frozen (0: never).",
    ),
    phase1_cases: int = typer.Option(0, "--phase1-cases", help="Training cases used in phase 1 (0: all)."),
    init_from: str = typer.Option(
        "", "--init-from", help="Warm start: copy the imaging encoder from this checkpoint, run folder or task."
    ),
    freeze_init: bool = typer.Option(
        False, "--freeze-init", help="Freeze the copied encoder from epoch 1 (a trunk/head encoder trains its head)."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    cache: Path | None = typer.Option(None, "--cache", help="Input cache folder (default RUN/cache); shareable."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue from RUN/last.pt when present."),
) -> None:
    """Train a fusion model (or a single-modality baseline) and calibrate it on validation patients."""
    from mmclinic.training.trainer import TrainConfig, train

    cfg = TrainConfig(
        task=task,
        modalities=tuple(m.strip() for m in modalities.split(",") if m.strip()),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        d_model=d_model,
        n_layers=layers,
        late_fusion=late_fusion,
        assertion_weight=assertion_weight,
        assertion_warmup=assertion_warmup,
        patience=patience,
        val_fraction=val_fraction,
        seed=seed,
        max_minutes=max_minutes,
        freeze_after=freeze_after,
        phase1_cases=phase1_cases,
        init_from=init_from,
        freeze_init=freeze_init,
        device=device,
    )
    res = train(manifest, out, cfg, cache_dir=cache, resume=resume)
    s = res.summary
    typer.echo(
        f"wrote {res.checkpoint} (sha256 {s['weights_sha256'][:12]}): validation AUROC {s['val_auroc']:.3f}, "
        f"ECE {s['val_ece']:.3f}, best epoch {s['best_epoch']}/{s['epochs_run']} ({s['stopped']})"
    )


@app.command("evaluate")
def evaluate_cmd(
    manifest: Path = typer.Option(..., "--manifest", help="Labelled cohort manifest."),
    model: str = typer.Option("tumor-risk", "--model", help="Run folder, checkpoint file or task plugin name."),
    out: Path = typer.Option(Path("eval"), "--out", help="Report folder (report.json/.md, PNG plots)."),
    compare: list[str] = typer.Option([], "--compare", help="Other models (e.g. single-modality runs); repeatable."),
    cache: Path | None = typer.Option(None, "--cache", help="Input cache folder (default OUT/cache)."),
    device: str = typer.Option("auto", "--device"),
    n_boot: int = typer.Option(1000, "--n-boot", help="Bootstrap resamples for CIs."),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
) -> None:
    """AUROC/AUPRC with CIs, Brier, ECE, operating point, detection, ablations and model comparison."""
    from mmclinic.training.evaluate import evaluate

    r = evaluate(manifest, model, out, compare=list(compare), cache_dir=cache, device=device, n_boot=n_boot, seed=seed)
    f = r["fused"]
    typer.echo(
        f"{r['n_cases']} cases: AUROC {f['auroc']:.3f} [{f['auroc_ci95'][0]:.3f}, {f['auroc_ci95'][1]:.3f}], "
        f"ECE {f['ece']:.3f}, Brier {f['brier']:.3f}; report in {out}/report.md"
    )


@app.command("train-detector")
def train_detector_cmd(
    manifest: Path = typer.Option(..., "--manifest", help="Cohort manifest whose ground truth has lesions."),
    model: str = typer.Option("tumor-risk", "--model", help="Trained model: run folder, checkpoint or task."),
    out: Path = typer.Option(..., "--out", help="Run folder: model.pt (the model with its detector)."),
    steps: int = typer.Option(1000, "--steps", help="Optimiser steps (whole volumes)."),
    batch_size: int = typer.Option(4, "--batch-size"),
    lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (one-cycle)."),
    eval_every: int = typer.Option(250, "--eval-every", help="Steps between validation passes (the best is kept)."),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    cache: Path | None = typer.Option(None, "--cache", help="Input cache folder (default RUN/cache); shareable."),
) -> None:
    """Train a findings detector beside a model's CT encoder (the risk does not change)."""
    from mmclinic.training.detector import DetectorConfig, train_detector

    cfg = DetectorConfig(steps=steps, batch_size=batch_size, lr=lr, eval_every=eval_every, seed=seed, device=device)
    res = train_detector(manifest, model, out, cfg, cache_dir=cache)
    typer.echo(
        f"wrote {res['checkpoint']} (sha256 {res['sha256'][:12]}): validation sensitivity at <= 1 FP/scan "
        f"{res['val_sensitivity']:.3f} (was {res['val_sensitivity_before']:.3f}), best step {res['best_step']}"
    )
