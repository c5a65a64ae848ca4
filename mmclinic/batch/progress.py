"""Run progress: counters shared by both engines and a rich progress bar with cases/s and ETA."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from mmclinic.batch.journal import Failure


@dataclass
class Counts:
    """What a run did so far: scored now, skipped (already done earlier), failed by reason code."""

    total: int = 0
    scored: int = 0
    skipped: int = 0
    failed: Counter[str] = field(default_factory=Counter)
    retryable: int = 0  # failures that were not the input's fault (a later run retries them)
    started: float = field(default_factory=time.perf_counter)

    @property
    def n_failed(self) -> int:
        """All failures."""
        return sum(self.failed.values())

    @property
    def done(self) -> int:
        """Cases with an outcome."""
        return self.scored + self.skipped + self.n_failed

    def add(self, scored: int, skipped: int, failures: list[Failure]) -> None:
        """Account one committed batch."""
        self.scored += scored
        self.skipped += skipped
        for f in failures:
            self.failed[f.reason] += 1
            self.retryable += not f.final


class _RateColumn(ProgressColumn):
    """Cases per second over the cases actually scored (skipped ones are instant and would inflate it)."""

    def render(self, task: Task) -> Text:
        scored = task.fields.get("scored", 0)
        elapsed = task.elapsed or 0.0
        rate = scored / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:.2f} cases/s", style="progress.data.speed")


class ProgressBar:
    """A rich progress bar on stderr, or nothing when disabled (tests, non-interactive logs)."""

    def __init__(self, counts: Counts, enabled: bool = True, description: str = "scoring") -> None:
        self.counts = counts
        self._progress: Progress | None = None
        self._task: Any = None
        if enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                _RateColumn(),
                TextColumn("failed {task.fields[failed]}"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=Console(stderr=True),  # stdout carries the command's results and may be piped
                transient=False,
            )
            self._task = self._progress.add_task(description, total=counts.total, scored=0, failed=0)

    def __enter__(self) -> ProgressBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self) -> None:
        """Redraw from the counters."""
        if self._progress is not None:
            c = self.counts
            self._progress.update(self._task, completed=c.done, scored=c.scored, failed=c.n_failed)
