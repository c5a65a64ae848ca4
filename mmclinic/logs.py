"""Logging set-up: one line per event, optional JSON; never patient identifiers."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None)))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")})
        return json.dumps(out, default=str)


def setup_logging(level: str | None = None, json_lines: bool | None = None) -> None:
    """Configure the root logger once from settings (idempotent)."""
    from mmclinic.config import get_settings

    settings = get_settings()
    root = logging.getLogger()
    if getattr(root, "_mmclinic_configured", False):
        return
    handler = logging.StreamHandler(sys.stderr)
    use_json = settings.log_json if json_lines is None else json_lines
    handler.setFormatter(
        _JsonFormatter() if use_json else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root.addHandler(handler)
    root.setLevel(level or settings.log_level)
    root._mmclinic_configured = True  # type: ignore[attr-defined]


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log a structured event. Pass only pseudonymous ids, hashes, reason codes and counts."""
    # LogRecord attributes (name, msg, ...) cannot be overwritten through ``extra``.
    extra = {(f"f_{k}" if k in _RESERVED else k): v for k, v in fields.items()}
    text = " ".join(f"{k}={v}" for k, v in sorted(fields.items()))
    logger.log(level, "%s %s", name, text, extra={"event": name, **extra})
