"""Plugin discovery through the ``mmclinic.plugins`` entry-point group, with validation at load."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from pydantic import BaseModel, ValidationError

from mmclinic.errors import PluginError
from mmclinic.plugin_api import ENTRY_POINT_GROUP, PLUGIN_KINDS, PluginBase

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class PluginRecord:
    """What discovery found for one entry point, valid or not."""

    entry_point: str
    distribution: str
    kind: str
    name: str
    version: str
    status: str  # "ok" or "error"
    reason: str = ""
    plugin: PluginBase | None = None


def _validate_class(obj: Any) -> type[PluginBase]:
    """Check the contract on a loaded entry-point object; raise PluginError with the reason."""
    if not isinstance(obj, type) or not issubclass(obj, PluginBase):
        raise PluginError("plugin.not_a_plugin", f"{obj!r} is not a ModalityPlugin/TaskPlugin subclass")
    kind = getattr(obj, "kind", None)
    if kind not in PLUGIN_KINDS or not issubclass(obj, PLUGIN_KINDS[kind]):
        raise PluginError("plugin.bad_kind", f"kind {kind!r} is not one of {sorted(PLUGIN_KINDS)}")
    name = getattr(obj, "name", None)
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise PluginError("plugin.bad_name", f"name {name!r} must match {_NAME_RE.pattern}")
    version = getattr(obj, "version", None)
    if not isinstance(version, str) or not version:
        raise PluginError("plugin.bad_version", "version must be a non-empty string")
    if kind == "modality" and not isinstance(getattr(obj, "modality", None), str):
        raise PluginError("plugin.bad_modality", "a modality plugin must declare its modality key")
    cfg = getattr(obj, "Config", None)
    if not isinstance(cfg, type) or not issubclass(cfg, BaseModel):
        raise PluginError("plugin.bad_config_schema", "Config must be a pydantic BaseModel subclass")
    for method in obj.required_methods:
        if not callable(getattr(obj, method, None)):
            raise PluginError("plugin.missing_method", f"required method {method!r} is missing")
    abstract = sorted(getattr(obj, "__abstractmethods__", ()))
    if abstract:
        raise PluginError("plugin.missing_method", f"abstract methods not implemented: {', '.join(abstract)}")
    return obj


def _load_entry_point(ep: EntryPoint, configs: Mapping[str, Mapping[str, Any]]) -> PluginRecord:
    dist = ep.dist.name if ep.dist is not None else "?"
    kind = name = version = "?"
    try:
        obj = ep.load()
        # Best-effort identity first, so a plugin that fails validation is still reported by name.
        kind = str(getattr(obj, "kind", "?"))
        name = str(getattr(obj, "name", ep.name))
        version = str(getattr(obj, "version", "?"))
        cls = _validate_class(obj)
        try:
            config = cls.Config.model_validate(dict(configs.get(name, {})))
        except ValidationError as exc:
            raise PluginError("plugin.bad_config", _first_error(exc)) from exc
        plugin = cls(config)
        return PluginRecord(ep.name, dist, kind, name, version, "ok", plugin=plugin)
    except PluginError as exc:
        reason = f"{exc.reason}: {exc.detail}"
    except Exception as exc:  # an import error in third-party code must not stop the others
        reason = f"plugin.import_failed: {type(exc).__name__}: {exc}"
    log.warning("plugin %s from %s rejected: %s", ep.name, dist, reason)
    return PluginRecord(ep.name, dist, kind, name, version, "error", reason)


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err.get("loc", ()))
    return f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg", "invalid"))


class Registry:
    """All plugins discovered in this environment."""

    def __init__(self, records: list[PluginRecord]) -> None:
        self.records = records

    @classmethod
    def discover(cls, configs: Mapping[str, Mapping[str, Any]] | None = None) -> Registry:
        """Load every entry point in the group; a broken plugin becomes an ``error`` record."""
        eps = sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
        records = [_load_entry_point(ep, configs or {}) for ep in eps]
        seen: dict[tuple[str, str], PluginRecord] = {}
        final: list[PluginRecord] = []
        for rec in records:
            key = (rec.kind, rec.name)
            if rec.status == "ok" and key in seen:
                rec = PluginRecord(
                    rec.entry_point,
                    rec.distribution,
                    rec.kind,
                    rec.name,
                    rec.version,
                    "error",
                    f"plugin.duplicate: {rec.kind} {rec.name!r} already provided by {seen[key].distribution}",
                )
            elif rec.status == "ok":
                seen[key] = rec
            final.append(rec)
        return cls(final)

    def ok(self, kind: str | None = None) -> list[PluginRecord]:
        """Valid plugins, optionally of one kind."""
        return [r for r in self.records if r.status == "ok" and (kind is None or r.kind == kind)]

    def get(self, kind: str, name: str) -> PluginBase:
        """The plugin instance; PluginError if absent or broken."""
        for rec in self.records:
            if rec.kind == kind and rec.name == name:
                if rec.plugin is None:
                    raise PluginError("plugin.unavailable", f"{kind} plugin {name!r} failed to load: {rec.reason}")
                return rec.plugin
        raise PluginError("plugin.not_found", f"no {kind} plugin named {name!r} is installed")

    def modality_for(self, modality: str) -> PluginBase:
        """The modality plugin that reads ``Case.inputs[modality]``."""
        for rec in self.ok("modality"):
            if getattr(rec.plugin, "modality", None) == modality:
                assert rec.plugin is not None
                return rec.plugin
        raise PluginError("plugin.not_found", f"no modality plugin reads {modality!r}")

    def versions(self) -> dict[str, str]:
        """``{name: version}`` of every valid plugin (for provenance)."""
        return {r.name: r.version for r in self.ok()}


_default: Registry | None = None


def get_registry(refresh: bool = False) -> Registry:
    """Process-wide registry built from the current settings' plugin configs."""
    global _default
    if _default is None or refresh:
        from mmclinic.config import get_settings

        _default = Registry.discover(get_settings().plugins)
    return _default
