"""Per-case, per-modality cache of loaded + collated + ``precompute``d inputs (one torch file each).

Epochs and repeated evaluations then neither re-read DICOM nor re-run a frozen text model. The key
covers the case's input reference (file sizes/mtimes for studies), the plugin's name, version and
config and the task spec, so models with different modality sets share entries and a changed input
or plugin is never served from a stale entry.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmclinic.case import Case, NoteRef, StudyRef, sha256_bytes, stable_hash
from mmclinic.engine.checkpoint import spec_to_dict
from mmclinic.engine.engine import InferenceEngine, PreparedCase
from mmclinic.errors import MmclinicError
from mmclinic.logs import event
from mmclinic.model.fusion import Batch
from mmclinic.plugin_api import ModalityInput

log = logging.getLogger(__name__)


@dataclass
class CachedInput:
    """One modality of one case: its batch-of-one tensors and the facts later stages need."""

    batch: dict[str, torch.Tensor]
    present: bool
    fingerprint: dict[str, str]
    meta: dict[str, Any]


def _ref_key(ref: Any) -> Any:
    """A cheap, stable description of an input reference (no decoding)."""
    if ref is None:
        return None
    if isinstance(ref, StudyRef):
        files = list(ref.files) or sorted(p for p in (ref.folder or Path(".")).rglob("*") if p.is_file())
        return [[str(p), *_stat(p)] for p in files]
    if isinstance(ref, NoteRef):
        return [sha256_bytes(ref.data), ref.note_type, str(ref.note_date)]
    if isinstance(ref, list | tuple):
        return [_ref_key(r) for r in ref]
    if isinstance(ref, dict):
        return {str(k): _ref_key(v) for k, v in sorted(ref.items(), key=lambda kv: str(kv[0]))}
    return repr(ref)


def _stat(p: Path) -> tuple[int, int]:
    st = os.stat(p)
    return st.st_size, st.st_mtime_ns


def _plain_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Meta entries that survive serialisation (callables are dropped; the plugin re-derives geometry)."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        if callable(v):
            continue
        try:
            json.dumps(v, default=_tolist)
        except TypeError:
            continue
        out[k] = json.loads(json.dumps(v, default=_tolist))
    return out


def _tolist(v: Any) -> Any:
    if hasattr(v, "tolist"):
        return v.tolist()
    raise TypeError(type(v).__name__)


class CaseCache:
    """Cache folder used with one engine (its plugins and task spec define the cached form)."""

    def __init__(self, root: Path, engine: InferenceEngine) -> None:
        self.root = root
        self.engine = engine
        self.root.mkdir(parents=True, exist_ok=True)
        self._spec_hash = stable_hash(spec_to_dict(engine.spec))
        self.hits = 0
        self.misses = 0

    def _key(self, case: Case, modality: str) -> str:
        plugin = self.engine.plugins[modality]
        return stable_hash(
            {
                "case": case.case_id,
                "modality": modality,
                "ref": _ref_key(case.inputs.get(modality)),
                "plugin": [plugin.name, plugin.version, plugin.config.model_dump(mode="json")],
                "spec": self._spec_hash,
            }
        )

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.pt"

    def get(self, case: Case) -> dict[str, CachedInput]:
        """Every model modality of ``case`` (absent ones as an absent batch); InputError on bad input."""
        out: dict[str, CachedInput] = {}
        todo: list[str] = []
        for m in self.engine.modalities:
            p = self._path(self._key(case, m))
            if p.is_file():
                try:
                    d = torch.load(p, map_location="cpu", weights_only=True)
                    out[m] = CachedInput(d["batch"], bool(d["present"]), d["fingerprint"], d["meta"])
                    self.hits += 1
                    continue
                except Exception as exc:  # a truncated file from a killed run: rebuild it
                    event(log, "cache.unreadable", error=type(exc).__name__)
            todo.append(m)
        if todo:
            self.misses += len(todo)
            out.update(self._build(case, todo))
        self.engine.check_modalities([m for m, c in out.items() if c.present])
        return out

    def _build(self, case: Case, modalities: list[str]) -> dict[str, CachedInput]:
        inputs: dict[str, ModalityInput] = {}
        for m in modalities:
            mi, _ = self.engine.load_modality(case, m)
            if mi is not None:
                inputs[m] = mi
        batch = self.engine.case_batch(PreparedCase(case.case_id, inputs, {}))
        out: dict[str, CachedInput] = {}
        for m in modalities:
            mi = inputs.get(m)
            ci = CachedInput(
                batch=batch[m],
                present=mi is not None,
                fingerprint=dict(mi.fingerprint) if mi else {},
                meta=_plain_meta(mi.meta) if mi else {},
            )
            path = self._path(self._key(case, m))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
            torch.save({"batch": ci.batch, "present": ci.present, "fingerprint": ci.fingerprint, "meta": ci.meta}, tmp)
            tmp.replace(path)
            out[m] = ci
        return out


def batch_of(cached: list[dict[str, CachedInput]], modalities: tuple[str, ...]) -> Batch:
    """One model batch from cached cases (zero-padding variable-length keys)."""
    from mmclinic.model.batching import concat_batches

    return concat_batches([{m: c[m].batch for m in modalities} for c in cached])


def safe_get(cache: CaseCache, case: Case) -> dict[str, CachedInput] | MmclinicError:
    """``get`` that returns the error instead of raising (a bad case must not stop a cohort run)."""
    try:
        return cache.get(case)
    except MmclinicError as exc:
        event(log, "cache.case_rejected", case=case.case_id, reason=exc.reason)
        return exc


def warm_cache(
    manifest: Path | Any,
    cache_dir: Path,
    task: str = "tumor-risk",
    progress: bool = True,
    registry: Any = None,
) -> dict[str, int]:
    """Fill the cache for every case of a manifest or Cohort (all of the task's modalities); returns counts."""
    from mmclinic.engine.device import resolve_device
    from mmclinic.engine.factory import new_model, task_parts
    from mmclinic.registry import get_registry
    from mmclinic.training.data import load_cohort
    from mmclinic.training.progress import progress_bar

    parts = task_parts(registry or get_registry(), task)
    engine = InferenceEngine(new_model(parts), {}, parts.task, parts.plugins, resolve_device("cpu"), "")
    cache = CaseCache(cache_dir, engine)
    cohort = load_cohort(manifest, parts.spec.labels) if isinstance(manifest, Path) else manifest
    bad = 0
    with progress_bar("caching inputs", len(cohort.cases), enabled=progress) as advance:
        for case in cohort.cases:
            bad += not isinstance(safe_get(cache, case), dict)
            advance()
    return {"cases": len(cohort.cases), "rejected": bad, "hits": cache.hits, "misses": cache.misses}
