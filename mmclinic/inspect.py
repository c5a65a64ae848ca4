"""What each modality plugin makes of a case: the library side of ``mmclinic inspect``."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmclinic.case import IMAGING, Case, StudyRef
from mmclinic.errors import InputError, MmclinicError
from mmclinic.plugin_api import ModalityPlugin, TaskPlugin, TaskSpec
from mmclinic.registry import Registry


@dataclass
class ModalityReport:
    """One modality of one case: ``ok``, ``absent``, ``rejected`` (with reason) or ``no_plugin``."""

    modality: str
    status: str
    plugin: str = ""
    reason: str = ""
    detail: str = ""
    summary: dict[str, Any] = field(default_factory=dict)
    fingerprint: dict[str, str] = field(default_factory=dict)


@dataclass
class CaseReport:
    """All modalities of one case (or the reason the case itself could not be read)."""

    case_id: str
    modalities: list[ModalityReport] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        """No case-level error and no rejected modality."""
        return not self.error and all(m.status in ("ok", "absent") for m in self.modalities)


def task_spec(registry: Registry, task: str) -> TaskSpec:
    """The named task plugin's spec (its tabular schema and imaging geometry drive validation)."""
    plugin = registry.get("task", task)
    assert isinstance(plugin, TaskPlugin)
    return plugin.spec()


def inspect_case(case: Case, registry: Registry, spec: TaskSpec) -> CaseReport:
    """Run every modality plugin the task names over the case; never raises for bad input."""
    report = CaseReport(case.case_id)
    wanted = list(dict.fromkeys([*spec.required_modalities, *spec.optional_modalities, *case.inputs]))
    for modality in wanted:
        try:
            plugin = registry.modality_for(modality)
        except MmclinicError as exc:
            report.modalities.append(ModalityReport(modality, "no_plugin", reason=exc.reason, detail=exc.detail))
            continue
        assert isinstance(plugin, ModalityPlugin)
        if modality not in case.inputs:
            report.modalities.append(ModalityReport(modality, "absent", plugin.name))
            continue
        try:
            loaded = plugin.load(case.inputs[modality], spec)
        except InputError as exc:
            report.modalities.append(ModalityReport(modality, "rejected", plugin.name, exc.reason, exc.detail))
            continue
        report.modalities.append(
            ModalityReport(modality, "ok", plugin.name, summary=loaded.summary, fingerprint=loaded.fingerprint)
        )
    return report


def cases_from_target(target: Path, labels: Sequence[str]) -> Iterator[Case | InputError]:
    """A manifest (CSV/Parquet) yields its cases (``labels``: the task's); a folder is one imaging-only case."""
    from mmclinic.cohort import iter_cases

    if target.is_dir():
        yield Case(case_id=target.name, patient_id="unknown", inputs={IMAGING: StudyRef(folder=target)})
    elif target.is_file():
        yield from iter_cases(target, labels=labels)
    else:
        yield InputError("inspect.not_found", f"no manifest or study folder at {target.name!r}")


def inspect_all(items: Iterable[Case | InputError], registry: Registry, spec: TaskSpec) -> list[CaseReport]:
    """Inspect every case; a manifest row that could not be read becomes a report with its reason."""
    reports: list[CaseReport] = []
    for i, item in enumerate(items, start=1):
        if isinstance(item, InputError):
            reports.append(CaseReport(f"row {i}", error=f"{item.reason}: {item.detail}"))
        else:
            reports.append(inspect_case(item, registry, spec))
    return reports
