"""Suite-wide pytest configuration; shared helpers live in ``tests/_support.py`` (on sys.path via pytest)."""

from __future__ import annotations

from _support import REQUIRE_ALL, require, require_tool

__all__ = ["REQUIRE_ALL", "require", "require_tool"]
