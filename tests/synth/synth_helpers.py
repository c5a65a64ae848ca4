"""Helpers shared by the synth tests (a uniquely named module: ``conftest`` names collide across folders)."""

from __future__ import annotations

from pathlib import Path

from mmclinic.synth import SynthSettings

SMALL = SynthSettings(cases=6, seed=5)


def all_files(root: Path) -> dict[str, bytes]:
    """Relative path → bytes of every file under ``root``."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
