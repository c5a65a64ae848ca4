"""The ``tabular-records`` modality plugin: validate a record against the task schema, fingerprint, collate, encode."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from mmclinic.case import TABULAR, sha256_bytes
from mmclinic.errors import InputError
from mmclinic.logs import event
from mmclinic.plugin_api import FeatureSpec, ModalityInput, ModalityPlugin, TaskSpec
from mmclinic_tabular_records import __version__
from mmclinic_tabular_records.config import TabularConfig
from mmclinic_tabular_records.encoder import TabularEncoder
from mmclinic_tabular_records.validate import RecordReport, Value, validate_record

log = logging.getLogger(__name__)


def canonical_json(values: Mapping[str, Value]) -> bytes:
    """Canonical JSON of a validated record (sorted keys, no whitespace): the fingerprinted form."""
    return json.dumps(dict(values), sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _encode_values(schema: Sequence[FeatureSpec], values: Mapping[str, Value]) -> dict[str, torch.Tensor]:
    num, cat, missing = [], [], []
    for spec in schema:
        v = values.get(spec.name)
        missing.append(v is None)
        num.append(float(v) if spec.type == "numeric" and isinstance(v, float) else 0.0)
        if spec.type == "boolean" and isinstance(v, bool):
            cat.append(int(v))
        elif spec.type == "categorical" and isinstance(v, str):
            cat.append(spec.categories.index(v))
        else:
            cat.append(0)
    return {
        "num": torch.tensor(num, dtype=torch.float32),
        "cat": torch.tensor(cat, dtype=torch.long),
        "missing": torch.tensor(missing, dtype=torch.bool),
    }


class TabularRecordsPlugin(ModalityPlugin):
    """One record row -> schema-validated features -> one token per feature."""

    name: ClassVar[str] = "tabular-records"
    version: ClassVar[str] = __version__
    modality: ClassVar[str] = TABULAR
    Config = TabularConfig

    @property
    def cfg(self) -> TabularConfig:
        assert isinstance(self.config, TabularConfig)
        return self.config

    def validate(self, record: Any, spec: TaskSpec) -> RecordReport:
        """Full per-field report without raising (for ``inspect``); InputError only if it is not a record."""
        if not isinstance(record, Mapping):
            raise InputError("tabular.invalid", f"expected a record mapping, got {type(record).__name__}")
        return validate_record(record, spec.tabular_schema, ignore_unknown_columns=self.cfg.ignore_unknown_columns)

    def load(self, ref: Any, spec: TaskSpec) -> ModalityInput:
        """Validated record; raises InputError with the first issue's reason code (all issues in the detail)."""
        if ref is None:
            return ModalityInput(TABULAR, data={}, fingerprint={}, summary={"present": False})
        report = self.validate(ref, spec)
        required = {f.name for f in spec.tabular_schema if f.required}
        fatal = [
            issue
            for issue in report.rejected
            if self.cfg.invalid_optional == "reject"
            or issue.reason == "tabular.unknown_column"
            or issue.field in required
        ]
        if fatal:
            event(log, "tabular.rejected", reasons=",".join(sorted({i.reason for i in fatal})), n=len(fatal))
            detail = "; ".join(f"{i.field}: {i.reason} ({i.detail})" for i in fatal)
            raise InputError(fatal[0].reason, detail)
        summary = {"present": True, **report.summary()}
        return ModalityInput(
            TABULAR,
            data=_encode_values(spec.tabular_schema, report.values),
            fingerprint={"record": sha256_bytes(canonical_json(report.values))},
            summary=summary,
            meta={"values": dict(report.values)},
        )

    def collate(self, items: Sequence[ModalityInput | None], spec: TaskSpec) -> dict[str, torch.Tensor]:
        """``num`` / ``cat`` / ``missing`` [B, F] + ``present`` [B]; absent cases are all-missing rows."""
        n = len(spec.tabular_schema)
        absent = {
            "num": torch.zeros(n),
            "cat": torch.zeros(n, dtype=torch.long),
            "missing": torch.ones(n, dtype=torch.bool),
        }
        rows = [it.data if it is not None and "num" in it.data else None for it in items]
        for row in rows:
            if row is not None and row["num"].shape[0] != n:
                raise InputError("tabular.schema_mismatch", f"record has {row['num'].shape[0]} features, task has {n}")
        out = (
            {key: torch.stack([(r or absent)[key] for r in rows]) for key in absent}
            if rows
            else {
                "num": torch.zeros(0, n),
                "cat": torch.zeros(0, n, dtype=torch.long),
                "missing": torch.zeros(0, n, dtype=torch.bool),
            }
        )
        out["present"] = torch.tensor([r is not None for r in rows], dtype=torch.bool)
        return out

    def build_encoder(self, d_model: int, spec: TaskSpec) -> TabularEncoder:
        """The feature tokenizer for the task's schema."""
        return TabularEncoder(spec.tabular_schema, d_model, clip=self.cfg.clip)
